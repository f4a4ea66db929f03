# Functions every hack/ script uses; sourced, never run:
#
#   HACK_NAME=real-node        # the prefix of its messages
#   HACK_SAY_FD=1              # optional: say() to stdout (default: stderr)
#   source "${HACK_DIR}/lib.sh"
#
# usage prints the script's own header comment (line 2 down to `set -E...`), so a
# script's documentation and its --help are one text.

HACK_NAME="${HACK_NAME:-$(basename "$0")}"

usage() { sed -n '2,/^set -E/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "${HACK_NAME}: $*" >&2; exit 1; }
say() { echo "${HACK_NAME}: $*" >&"${HACK_SAY_FD:-2}"; }
# Seconds as 3m07s, for "took ..." lines.
fmt_elapsed() { local s="$1"; printf '%dm%02ds' $((s / 60)) $((s % 60)); }
