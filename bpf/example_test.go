package bpf_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"

	"github.com/cordon-dev/cordon/bpf"
)

// This is how `cordon-sidecar run` is meant to confine a job: a cgroup of
// its own, the programs attached before the job exists, and the job cloned
// straight into the cgroup. A host that cannot load the programs (Fargate)
// runs the job at LevelNetworkOnly; any other failure refuses to run it.
func Example() {
	run := func(runID string, policy bpf.Policy, argv []string) (level string, err error) {
		root, err := bpf.FindCgroup2()
		if errors.Is(err, bpf.ErrNoCgroup2) {
			root = "/run/cordon/cgroup2"
			err = bpf.MountCgroup2(root)
		}
		if errors.Is(err, bpf.ErrNotSupported) {
			return bpf.LevelNetworkOnly, nil // and run the job without a cgroup
		}
		if err != nil {
			return "", err
		}
		cg, err := bpf.NewJobCgroup(root, "cordon-job-"+runID)
		if err != nil {
			return "", err
		}
		defer cg.Remove() // kills anything the job left behind

		level = bpf.LevelCgroupEBPF
		enf, err := bpf.Enforce(cg.Path(), policy)
		switch {
		case errors.Is(err, bpf.ErrNotSupported):
			level = bpf.LevelNetworkOnly
		case err != nil:
			return "", fmt.Errorf("confine job: %w", err) // fail closed
		default:
			defer enf.Close()
		}

		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cg.Apply(cmd) // the child starts inside the cgroup: no unconfined window
		if err := cmd.Run(); err != nil {
			return level, err
		}
		if enf != nil {
			c, err := enf.Counters() // for the usage report
			if err == nil {
				fmt.Println(c.Bytes, c.DeniedConnects)
			}
		}
		return level, nil
	}
	_ = run
	_ = bpf.Policy{
		Proxy:      netip.MustParseAddrPort("127.0.0.1:3128"),
		DNS:        netip.MustParseAddrPort("169.254.169.253:53"),
		AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")},
		// The agent's credentials endpoint: this port of 127.0.0.1 only.
		AllowEndpoints: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:8090")},
	}
}
