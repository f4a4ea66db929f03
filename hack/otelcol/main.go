// Command otelcol is the OpenTelemetry Collector the tests send traces to: the OTLP
// receiver (gRPC and HTTP), the file exporter (what was received, as OTLP JSON lines a
// test reads back) and the debug exporter, nothing else.
//
// hack/k8s-tools builds it from the collector's published modules at the release pinned
// in hack/versions.env (OTELCOL_VERSION), as the collector's own builder (ocb) would from
// a manifest listing these components. Its --version and the `components` subcommand
// report the module versions linked into the binary (runtime/debug), not a stamped string.
package main

import (
	"os"
	"runtime/debug"
	"strings"

	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/debugexporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

// modules maps each linked module's path to "path version", as ocb writes them.
func modules() map[string]string {
	found := map[string]string{}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			found[dep.Path] = dep.Path + " " + dep.Version
		}
	}
	return found
}

func components() (otelcol.Factories, error) {
	mods := modules()
	factories := otelcol.Factories{Telemetry: otelconftelemetry.NewFactory()}
	var err error
	factories.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory())
	if err != nil {
		return otelcol.Factories{}, err
	}
	factories.ReceiverModules = map[component.Type]string{
		otlpreceiver.NewFactory().Type(): mods["go.opentelemetry.io/collector/receiver/otlpreceiver"],
	}
	factories.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](
		fileexporter.NewFactory(),
		debugexporter.NewFactory(),
	)
	if err != nil {
		return otelcol.Factories{}, err
	}
	factories.ExporterModules = map[component.Type]string{
		fileexporter.NewFactory().Type():  mods["github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"],
		debugexporter.NewFactory().Type(): mods["go.opentelemetry.io/collector/exporter/debugexporter"],
	}
	return factories, nil
}

func main() {
	mods := modules()
	version := strings.TrimPrefix(strings.TrimPrefix(mods["go.opentelemetry.io/collector/otelcol"], "go.opentelemetry.io/collector/otelcol "), "v")
	set := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "otelcol",
			Description: "OpenTelemetry Collector for BHIV Core's tests (OTLP receiver; file and debug exporters)",
			Version:     version,
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(),
					fileprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
			},
		},
		ProviderModules: map[string]string{
			"env":  mods["go.opentelemetry.io/collector/confmap/provider/envprovider"],
			"file": mods["go.opentelemetry.io/collector/confmap/provider/fileprovider"],
			"yaml": mods["go.opentelemetry.io/collector/confmap/provider/yamlprovider"],
		},
	}
	// cobra has already printed the error.
	if err := otelcol.NewCommand(set).Execute(); err != nil {
		os.Exit(1)
	}
}
