// Command cnictl is a small, real CNI client built on libcni (the library every
// container runtime uses to call CNI plugins).  It plays the role of upstream's
// cnitool, which Debian does not ship, for tests, the demo and benchmarks.
//
//	cnictl add|check|del|get --conflist FILE --netns PATH --container-id ID
//	       [--ifname eth0] [--cni-path DIR[:DIR]] [--cache-dir DIR]
//	       [--args K=V;K=V] [--capability-args JSON]
//	       [--runtime-config-file FILE] [--timing]
//
// Output: the CNI result JSON on stdout (or "{}" for CHECK/DEL and for GET
// without a cached result).  On failure the error goes to stderr and the exit
// status is 1; when the error is a CNI error returned by a plugin, the last
// stderr line is that error as JSON ({"code":N,"msg":...,"details":...}).
// With --timing the wall time of the libcni call is printed on stderr as
// "cnictl: elapsed_ms=<float>".
//
// Runtime config handling (what real runtimes do): ADD's args and capability
// args are stored by libcni in its cache (--cache-dir) and, when
// --runtime-config-file is given, also in that file.  CHECK and DEL reuse
// them unless --args / --capability-args are passed explicitly; explicit
// flags always win.
//
// Build offline (GOPATH mode, Debian's libcni): see tools/build-cnictl.sh.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const usage = `usage: cnictl add|check|del|get --conflist FILE --netns PATH --container-id ID
       [--ifname eth0] [--cni-path DIR[:DIR]] [--cache-dir DIR] [--args K=V;K=V]
       [--capability-args JSON] [--runtime-config-file FILE] [--timing]`

// savedRuntime is what --runtime-config-file holds: the runtime config an ADD
// used, so CHECK and DEL can pass exactly the same values again.
type savedRuntime struct {
	ContainerID    string                 `json:"containerId"`
	NetNS          string                 `json:"netns"`
	IfName         string                 `json:"ifname"`
	Network        string                 `json:"network"`
	Args           [][2]string            `json:"args"`
	CapabilityArgs map[string]interface{} `json:"capabilityArgs"`
}

type options struct {
	command         string
	conflist        string
	netns           string
	containerID     string
	ifname          string
	cniPath         string
	cacheDir        string
	args            string
	argsSet         bool
	capArgs         string
	capArgsSet      bool
	runtimeConfFile string
	timing          bool
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "cnictl: "+format+"\n", a...)
	os.Exit(1)
}

func failErr(op string, err error) {
	fmt.Fprintf(os.Stderr, "cnictl: %s: %v\n", op, err)
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		if b, jerr := json.Marshal(cniErr); jerr == nil {
			fmt.Fprintln(os.Stderr, string(b))
		}
	}
	os.Exit(1)
}

func parseOptions(argv []string) options {
	if len(argv) < 1 {
		fail("missing command\n%s", usage)
	}
	o := options{command: argv[0]}
	switch o.command {
	case "add", "check", "del", "get":
	case "-h", "--help", "help":
		fmt.Println(usage)
		os.Exit(0)
	default:
		fail("unknown command %q\n%s", o.command, usage)
	}
	fs := flag.NewFlagSet("cnictl "+o.command, flag.ContinueOnError)
	fs.StringVar(&o.conflist, "conflist", "", "network configuration list file (a single .conf is accepted too)")
	fs.StringVar(&o.netns, "netns", "", "path of the network namespace (may be empty for del)")
	fs.StringVar(&o.containerID, "container-id", "", "container id")
	fs.StringVar(&o.ifname, "ifname", "eth0", "interface name inside the namespace")
	fs.StringVar(&o.cniPath, "cni-path", os.Getenv("CNI_PATH"), "plugin search path, ':'-separated (default $CNI_PATH or /opt/cni/bin)")
	fs.StringVar(&o.cacheDir, "cache-dir", "", "libcni cache directory (default /var/lib/cni)")
	fs.StringVar(&o.args, "args", "", "CNI_ARGS as K=V;K=V")
	fs.StringVar(&o.capArgs, "capability-args", "", "capability args (runtimeConfig) as a JSON object")
	fs.StringVar(&o.runtimeConfFile, "runtime-config-file", "", "file to store ADD's runtime config in, reused by check/del")
	fs.BoolVar(&o.timing, "timing", false, "print the elapsed wall time of the libcni call on stderr")
	if err := fs.Parse(argv[1:]); err != nil {
		fail("%v", err)
	}
	if fs.NArg() != 0 {
		fail("unexpected arguments: %v", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "args":
			o.argsSet = true
		case "capability-args":
			o.capArgsSet = true
		}
	})
	if o.conflist == "" {
		fail("--conflist is required")
	}
	if o.containerID == "" {
		fail("--container-id is required")
	}
	if o.netns == "" && o.command == "add" {
		fail("--netns is required for add")
	}
	return o
}

func parseArgs(s string) ([][2]string, error) {
	var out [][2]string
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		parts := strings.SplitN(kv, "=", 2)
		if len(parts) != 2 || parts[0] == "" {
			return nil, fmt.Errorf("invalid CNI arg %q (want K=V)", kv)
		}
		out = append(out, [2]string{parts[0], parts[1]})
	}
	return out, nil
}

func loadConfList(path string) (*libcni.NetworkConfigList, error) {
	data, err := ioutil.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("error parsing %s: %w", path, err)
	}
	if _, ok := probe["plugins"]; ok {
		return libcni.ConfListFromBytes(data)
	}
	conf, err := libcni.ConfFromBytes(data)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromConf(conf)
}

func splitPath(p string) []string {
	var out []string
	for _, d := range filepath.SplitList(p) {
		if d != "" {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		out = []string{"/opt/cni/bin"}
	}
	return out
}

func printResult(v interface{}) {
	if v == nil {
		fmt.Println("{}")
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		fail("marshal result: %v", err)
	}
	fmt.Println(string(b))
}

func main() {
	o := parseOptions(os.Args[1:])

	list, err := loadConfList(o.conflist)
	if err != nil {
		failErr("load conflist", err)
	}

	rt := &libcni.RuntimeConf{
		ContainerID: o.containerID,
		NetNS:       o.netns,
		IfName:      o.ifname,
	}
	cni := libcni.NewCNIConfigWithCacheDir(splitPath(o.cniPath), o.cacheDir, nil)

	// Runtime config: explicit flags > --runtime-config-file > libcni cache.
	if o.command != "add" {
		if _, cachedRt, cerr := cni.GetNetworkListCachedConfig(list, rt); cerr == nil && cachedRt != nil {
			rt.Args = cachedRt.Args
			rt.CapabilityArgs = cachedRt.CapabilityArgs
		}
		if o.runtimeConfFile != "" {
			if data, rerr := ioutil.ReadFile(o.runtimeConfFile); rerr == nil {
				var saved savedRuntime
				if jerr := json.Unmarshal(data, &saved); jerr != nil {
					fail("parse %s: %v", o.runtimeConfFile, jerr)
				}
				rt.Args = saved.Args
				rt.CapabilityArgs = saved.CapabilityArgs
			} else if !os.IsNotExist(rerr) {
				fail("read %s: %v", o.runtimeConfFile, rerr)
			}
		}
	}
	if o.argsSet {
		if rt.Args, err = parseArgs(o.args); err != nil {
			fail("%v", err)
		}
	}
	if o.capArgsSet {
		rt.CapabilityArgs = nil
		if strings.TrimSpace(o.capArgs) != "" {
			if err := json.Unmarshal([]byte(o.capArgs), &rt.CapabilityArgs); err != nil {
				fail("--capability-args: invalid JSON object: %v", err)
			}
		}
	}

	ctx := context.Background()
	var result types.Result
	start := time.Now()
	switch o.command {
	case "add":
		result, err = cni.AddNetworkList(ctx, list, rt)
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	case "get":
		result, err = cni.GetNetworkListCachedResult(list, rt)
	}
	elapsed := time.Since(start)
	if o.timing {
		fmt.Fprintf(os.Stderr, "cnictl: elapsed_ms=%.3f\n", float64(elapsed.Microseconds())/1000.0)
	}
	if err != nil {
		failErr(o.command, err)
	}

	if o.runtimeConfFile != "" {
		switch o.command {
		case "add":
			saved := savedRuntime{
				ContainerID:    rt.ContainerID,
				NetNS:          rt.NetNS,
				IfName:         rt.IfName,
				Network:        list.Name,
				Args:           rt.Args,
				CapabilityArgs: rt.CapabilityArgs,
			}
			b, _ := json.Marshal(&saved)
			if werr := ioutil.WriteFile(o.runtimeConfFile, b, 0o600); werr != nil {
				fail("write %s: %v", o.runtimeConfFile, werr)
			}
		case "del":
			_ = os.Remove(o.runtimeConfFile)
		}
	}

	if result == nil {
		printResult(nil)
		return
	}
	printResult(result)
}
