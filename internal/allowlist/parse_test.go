package allowlist

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// invalidFixtures pins, for every file in testdata/invalid (one per failure
// mode), every error Parse reports as LINE:COL: message.
var invalidFixtures = []struct {
	name string
	want []string
}{
	{"alias_undefined", []string{
		"7:16: YAML alias *ports is not allowed (and refers to no anchor): write the value out, and quote hosts that start with '*'",
	}},
	{"allow_duplicate", []string{
		"11:18: job block_follower allows endpoint set \"rpc\" twice: remove one",
	}},
	{"anchor_alias", []string{
		"7:16: YAML anchor &p is not allowed: allowlists are reviewed line by line, write values out where they are used",
		"9:16: YAML alias *p is not allowed: write the value out",
	}},
	{"cidr_6to4", []string{
		"6:15: cidr 2000::/3 covers 2002:a9fe:a9fe::/48, the 6to4 form of the metadata address, which no job may reach: list narrower ranges that leave it out",
	}},
	{"cidr_all_ipv4", []string{
		"6:15: cidr 0.0.0.0/0 covers the cloud metadata address 169.254.169.254, which no job may reach: list narrower ranges that leave it out",
	}},
	{"cidr_all_ipv6", []string{
		"6:15: cidr ::/0 covers the IPv6 cloud metadata address fd00:ec2::254, which no job may reach: list narrower ranges that leave it out",
	}},
	{"cidr_ecs_metadata", []string{
		"6:15: cidr 169.254.170.2/32 covers the ECS task metadata address 169.254.170.2, which no job may reach: list narrower ranges that leave it out",
	}},
	{"cidr_garbage", []string{
		"6:15: cidr \"10.20.0.0/33\" is not an IP prefix (prefix length out of range): write it as ADDRESS/BITS, like 10.20.0.0/16",
	}},
	{"cidr_host_bits", []string{
		"6:15: cidr \"10.20.0.1/16\" has host bits set: write \"10.20.0.0/16\"",
	}},
	{"cidr_ipv6_metadata", []string{
		"6:15: cidr fd00:ec2::/32 covers the IPv6 cloud metadata address fd00:ec2::254, which no job may reach: list narrower ranges that leave it out",
	}},
	{"cidr_mapped_metadata", []string{
		"6:15: cidr 169.254.169.254/32 covers the cloud metadata address 169.254.169.254, which no job may reach: list narrower ranges that leave it out",
	}},
	{"cidr_metadata", []string{
		"6:15: cidr 169.254.0.0/16 covers the cloud metadata address 169.254.169.254, which no job may reach: list narrower ranges that leave it out",
	}},
	{"cidr_nat64_metadata", []string{
		"6:15: cidr 64:ff9b::/96 covers 64:ff9b::a9fe:a9fe, the NAT64 form of the metadata address, which no job may reach: list narrower ranges that leave it out",
	}},
	{"cidr_no_length", []string{
		"6:15: cidr \"10.20.0.1\" has no prefix length: write \"10.20.0.1/32\" for one address",
	}},
	{"class_bad", []string{
		"10:12: class \"admin\" is not a class: use platform or user",
	}},
	{"duplicate_job", []string{
		"12:3: duplicate key \"block_follower\" in jobs (first at line 9): remove one",
	}},
	{"duplicate_key", []string{
		"11:5: duplicate key \"class\" in job block_follower (first at line 10): remove one",
	}},
	{"empty", []string{
		"1:1: file is empty: write version: 1, org and jobs",
	}},
	{"entries_empty", []string{
		"5:14: endpoint set rpc has no entries: add one or delete the set",
	}},
	{"entry_duplicate", []string{
		"8:9: endpoint set rpc lists rpc.monad.example twice (first at line 6): merge the ports into one entry",
	}},
	{"explicit_tag", []string{
		"1:10: explicit YAML tag !!int is not allowed: remove it",
	}},
	{"host_and_cidr", []string{
		"7:9: entry of endpoint set rpc has both host and cidr: split it into two entries",
	}},
	{"host_empty_label", []string{
		"6:15: host \"rpc..example\" is not a valid DNS name: empty label",
	}},
	{"host_fullwidth", []string{
		"6:15: host \"ｒｐｃ.monad.example\" is not canonical: write \"rpc.monad.example\" (hosts are lowercase punycode without a trailing dot)",
	}},
	{"host_fullwidth_ip", []string{
		"6:15: host \"１２７．０．０．１\" is an IP address: use a cidr entry, as in cidr: ADDRESS/32",
	}},
	{"host_hex_ip", []string{
		"6:15: host \"0x7f.1\" is an IP address: use a cidr entry, as in cidr: ADDRESS/32",
	}},
	{"host_ip_literal", []string{
		"6:15: host \"10.0.0.1\" is an IP address: use a cidr entry, as in cidr: 10.0.0.1/32",
	}},
	{"host_ipv6_literal", []string{
		"6:15: host \"[fd00::1]\" is an IP address: use a cidr entry, as in cidr: fd00::1/128",
	}},
	{"host_long_label", []string{
		"6:15: host \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example\" is not a valid DNS name: label \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" is 64 bytes, over the 63-byte limit",
	}},
	{"host_numeric", []string{
		"6:15: host must be a string, got the integer 2130706433",
	}},
	{"host_numeric_quoted", []string{
		"6:15: host \"2130706433\" is an IP address: use a cidr entry, as in cidr: ADDRESS/32",
	}},
	{"host_star_middle", []string{
		"6:15: host \"a.*.example.com\": '*' is allowed only as the whole first label, as in \"*.example.com\"",
	}},
	{"host_star_partial", []string{
		"6:15: host \"*foo.example.com\": '*' is allowed only as the whole first label, as in \"*.example.com\"",
	}},
	{"host_trailing_dot", []string{
		"6:15: host \"rpc.monad.example.\" is not canonical: write \"rpc.monad.example\" (hosts are lowercase punycode without a trailing dot)",
	}},
	{"host_underscore", []string{
		"6:15: host \"rpc_node.example\" is not a valid DNS name: character '_' is not allowed: use letters, digits, hyphens and dots",
	}},
	{"host_unicode", []string{
		"6:15: host \"bücher.example\" is not canonical: write \"xn--bcher-kva.example\" (hosts are lowercase punycode without a trailing dot)",
	}},
	{"host_uppercase", []string{
		"6:15: host \"RPC.Monad.Example\" is not canonical: write \"rpc.monad.example\" (hosts are lowercase punycode without a trailing dot)",
	}},
	{"job_name_bad", []string{
		"9:3: job name \"block.follower\" is not a valid name: use 1 to 63 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit",
	}},
	{"merge_key", []string{
		"10:5: YAML merge key << is not allowed: write the fields out",
	}},
	{"missing_class", []string{
		"10:5: job block_follower is missing required field \"class\"",
	}},
	{"missing_entries", []string{
		"5:5: endpoint set rpc is missing required field \"entries\"",
	}},
	{"missing_org", []string{
		"1:1: the file is missing required field \"org\"",
	}},
	{"missing_ports", []string{
		"6:9: entry of endpoint set rpc is missing required field \"ports\"",
	}},
	{"missing_version", []string{
		"1:1: the file is missing required field \"version\"",
	}},
	{"mode_bad", []string{
		"11:11: mode \"audit\" is not a mode: use enforce (the default) or report",
	}},
	{"multi_document", []string{
		"12:1: file holds a second YAML document: one file is one org's policy, remove the '---' and what follows or move it to its own file",
	}},
	{"neither_host_nor_cidr", []string{
		"6:9: entry of endpoint set rpc needs a host or a cidr",
	}},
	{"non_utf8", []string{
		"2:8: file is not valid UTF-8: save it as UTF-8",
	}},
	{"null_allow", []string{
		"11:11: allow of job block_follower must be a list of endpoint set names, as in [platform_storage], got nothing (null)",
	}},
	{"org_dot", []string{
		"2:6: org \"..\" is not a valid name: use 1 to 63 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit",
	}},
	{"org_uppercase", []string{
		"2:6: org \"Acme\" is not a valid name: use 1 to 63 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit",
	}},
	{"port_duplicate", []string{
		"7:28: port 443 is listed twice: remove one",
	}},
	{"port_empty", []string{
		"7:16: ports is empty: list the ports the entry allows, as in [443]",
	}},
	{"port_hex", []string{
		"7:17: port 0x1bb must be written as a plain decimal number",
	}},
	{"port_negative", []string{
		"7:17: port -1 is out of range: use 1 to 65535",
	}},
	{"port_too_big", []string{
		"7:17: port 65536 is out of range: use 1 to 65535",
	}},
	{"port_zero", []string{
		"7:17: port 0 is out of range: use 1 to 65535",
	}},
	{"set_name_bad", []string{
		"4:3: endpoint set name \"RPC\" is not a valid name: use 1 to 63 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit",
	}},
	{"syntax_after_multiline_flow", []string{
		"14:4: invalid YAML: did not find expected key",
	}},
	{"syntax_bad_indent", []string{
		"6:4: invalid YAML: did not find expected key",
	}},
	{"syntax_error", []string{
		"7:9: invalid YAML: did not find expected ',' or ']'",
	}},
	{"syntax_tab", []string{
		"5:1: invalid YAML: found character that cannot start any token: indent with spaces, YAML does not allow tabs",
	}},
	{"top_level_list", []string{
		"1:1: the file must be a mapping, got a list",
	}},
	{"undefined_set", []string{
		"11:18: job block_follower allows undefined endpoint set \"monad_rpc\": define it under endpoint_sets or remove it (defined: rpc)",
	}},
	{"unknown_field_entry", []string{
		"6:9: entry of endpoint set rpc is missing required field \"ports\"",
		"7:9: unknown field \"port\" in entry of endpoint set rpc (did you mean \"ports\"?): allowed fields are host, cidr, ports",
	}},
	{"unknown_field_job", []string{
		"12:5: unknown field \"timeout\" in job block_follower: allowed fields are class, mode, allow, webhooks",
	}},
	{"unknown_field_set", []string{
		"5:5: unknown field \"platformonly\" in endpoint set rpc (did you mean \"platform_only\"?): allowed fields are platform_only, entries",
	}},
	{"unknown_field_top", []string{
		"3:1: unknown field \"orgs\" in the file (did you mean \"org\"?): allowed fields are version, org, endpoint_sets, webhooks, jobs",
	}},
	{"unquoted_star", []string{
		"6:15: invalid YAML (did not find expected alphabetic or numeric character): quote hosts that start with '*', as in host: \"*.example.com\"",
	}},
	{"unquoted_star_first_line", []string{
		"1:7: invalid YAML (did not find expected alphabetic or numeric character): quote hosts that start with '*', as in host: \"*.example.com\"",
	}},
	{"user_platform_only", []string{
		"12:13: user-class job block_follower may not use platform_only endpoint set \"rpc\" (seeds/000: user jobs get no raw RPC access): remove it, or make the job class platform after review",
	}},
	{"version_2", []string{
		"1:10: unsupported version 2: this parser reads version 1",
	}},
	{"version_string", []string{
		"1:10: version must be an integer, got \"1\"",
	}},
	{"webhook_bad_port", []string{
		"4:5: webhook \"https://hooks.slack.com:0/services/\" has port \"0\": use 1 to 65535 or leave it out for 443",
	}},
	{"webhook_dot_segment", []string{
		"4:5: webhook \"https://hooks.slack.com/services/%2e%2e/admin\" has a dot, encoded slash or invalid segment in its path: write the plain path",
	}},
	{"webhook_duplicate", []string{
		"5:5: webhook https://hooks.slack.com/services/T0/B0/ is listed twice (first at line 4): remove one",
	}},
	{"webhook_fragment", []string{
		"4:5: webhook \"https://hooks.slack.com/services/T0/B0/#x\" has a fragment: remove the '#' and what follows",
	}},
	{"webhook_http", []string{
		"4:5: webhook \"http://hooks.slack.com/services/T0/B0/\" must be an https:// URL (seeds/000: TLS required)",
	}},
	{"webhook_ip", []string{
		"4:5: webhook \"https://10.0.0.1/hook\" has an IP address as its host: use the DNS name the service publishes",
	}},
	{"webhook_query", []string{
		"4:5: webhook \"https://hooks.slack.com/services/T0/B0/?a=b\" has a query: list the URL up to its path; the path is a prefix",
	}},
	{"webhook_uppercase_host", []string{
		"4:5: webhook \"https://Hooks.Slack.com/services/T0/B0/\" host is not canonical: write \"hooks.slack.com\"",
	}},
	{"webhook_userinfo", []string{
		"4:5: webhook URL carries user information: remove the user:password@ part; credentials do not belong in an allowlist",
	}},
	{"webhooks_without_urls", []string{
		"12:15: job block_follower sets webhooks: true but the file lists no webhooks: add the URLs under the top-level webhooks or remove this line",
	}},
	{"wildcard_co_uk", []string{
		"6:15: `*.co.uk` covers the public suffix co.uk: list the hosts you need",
	}},
	{"wildcard_com", []string{
		"6:15: `*.com` covers the public suffix com: list the hosts you need",
	}},
	{"wildcard_double", []string{
		"6:15: host \"*.*.example.com\": '*' is allowed only as the whole first label, as in \"*.example.com\"",
	}},
	{"wildcard_tld", []string{
		"6:15: `*.example` covers the public suffix example: list the hosts you need",
	}},
	{"wildcard_uk", []string{
		"6:15: `*.uk` covers the public suffix uk: list the hosts you need",
	}},
	{"wrong_type_allow", []string{
		"11:12: allow of job block_follower must be a list of endpoint set names, as in [platform_storage], got \"rpc\"",
	}},
	{"wrong_type_host", []string{
		"6:15: host must be a string, got a list",
	}},
	{"wrong_type_platform_only", []string{
		"5:20: platform_only must be true or false, got \"yes\"",
	}},
	{"wrong_type_port_string", []string{
		"7:17: port must be an integer, got \"443\"",
	}},
	{"wrong_type_ports", []string{
		"7:16: ports must be a list of port numbers, as in [443], got the integer 443",
	}},
}

func TestParseInvalidFixtures(t *testing.T) {
	for _, tc := range invalidFixtures {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join("testdata", "invalid", tc.name+".yaml")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := Parse(path, data)
			if f != nil {
				t.Errorf("got a File, want nil on error")
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("got error %v (%T), want an ErrorList", err, err)
			}
			var got []string
			for _, e := range list {
				if e.Pos.File != path {
					t.Errorf("error file: got %q, want %q", e.Pos.File, path)
				}
				got = append(got, fmt.Sprintf("%d:%d: %s", e.Pos.Line, e.Pos.Col, e.Msg))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("errors:\ngot  %q\nwant %q", got, tc.want)
			}
			if first := path + ":" + tc.want[0]; !strings.HasPrefix(err.Error(), first) {
				t.Errorf("Error(): got %q, want it to start with %q", err.Error(), first)
			}
		})
	}
}

// TestEveryInvalidFixtureIsPinned keeps the table and testdata/invalid in step.
func TestEveryInvalidFixtureIsPinned(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pinned := map[string]bool{}
	for _, tc := range invalidFixtures {
		pinned[tc.name] = true
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		if !pinned[name] {
			t.Errorf("fixture %s has no entry in invalidFixtures", f)
		}
		delete(pinned, name)
	}
	for name := range pinned {
		t.Errorf("invalidFixtures entry %s has no file testdata/invalid/%s.yaml", name, name)
	}
}
