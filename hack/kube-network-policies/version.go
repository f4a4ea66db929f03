// Added to sigs.k8s.io/kube-network-policies by BHIV Core's hack/k8s-tools.

package main

import (
	"fmt"
	"os"
)

// version is set with -ldflags "-X main.version=..." (upstream prints none).
var version = "unknown"

// --version prints the release this binary was built from, before any other flag
// handling, so the build can check it as it checks every other tool.
func init() {
	for _, arg := range os.Args[1:] {
		if arg == "--version" || arg == "-version" {
			fmt.Println("kube-network-policies", version)
			os.Exit(0)
		}
	}
}
