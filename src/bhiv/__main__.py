from bhiv.cli.main import app

app(prog_name="bhiv")
