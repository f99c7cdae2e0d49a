package consent

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name    string
		value   string
		want    []Entry
		wantErr []string // substrings of the error; none: no error
	}{
		{name: "empty", value: ""},
		{name: "one", value: "netops/lab", want: []Entry{{"netops", "lab"}}},
		{name: "spaces and a trailing comma", value: " netops/lab ,netops/* , ", want: []Entry{{"netops", "lab"}, {"netops", "*"}}},
		{name: "dotted server name", value: "netops/lab.v2", want: []Entry{{"netops", "lab.v2"}}},
		{name: "no slash", value: "netops", wantErr: []string{`"netops" is not <namespace>/<server>`}},
		{name: "wildcard namespace", value: "*/lab", wantErr: []string{`"*" is not a namespace name`}},
		{name: "empty namespace", value: "/lab", wantErr: []string{`"" is not a namespace name`}},
		{name: "empty server", value: "netops/", wantErr: []string{`"" is neither a Server name nor "*"`}},
		{name: "upper case", value: "NetOps/lab", wantErr: []string{`"NetOps" is not a namespace name`}},
		{name: "two slashes", value: "netops/lab/x", wantErr: []string{`"lab/x" is neither`}},
		{
			name: "well-formed entries survive malformed ones", value: "bad, netops/lab, also bad/x/y",
			want:    []Entry{{"netops", "lab"}},
			wantErr: []string{`"bad"`, `"also bad/x/y"`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.value)
			assert.Equal(t, tc.want, got)
			if len(tc.wantErr) == 0 {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, s := range tc.wantErr {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestAllows(t *testing.T) {
	cases := []struct {
		name        string
		annotations map[string]string
		want        bool
	}{
		{name: "no annotations"},
		{name: "other annotations only", annotations: map[string]string{"hyperdhcp.io/allow": "netops/lab"}},
		{name: "named", annotations: map[string]string{Annotation: "netops/lab"}, want: true},
		{name: "any server of the namespace", annotations: map[string]string{Annotation: "netops/*"}, want: true},
		{name: "another server", annotations: map[string]string{Annotation: "netops/other"}},
		{name: "same server name, other namespace", annotations: map[string]string{Annotation: "net/lab"}},
		{name: "prefix is not a match", annotations: map[string]string{Annotation: "netops/la"}},
		{name: "among malformed entries", annotations: map[string]string{Annotation: "x, netops/lab"}, want: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := Allows(tc.annotations, "netops", "lab")
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestDecide(t *testing.T) {
	namespaces := map[string]map[string]string{
		"consents":  {Annotation: "netops/lab"},
		"any":       {Annotation: "netops/*"},
		"silent":    {},
		"other":     {Annotation: "netops/other"},
		"malformed": {Annotation: "lab"},
	}
	annotations := func(ns string) map[string]string { return namespaces[ns] } // nil: no such namespace
	cases := []struct {
		name     string
		kubevirt *hyperdhcpv1beta1.KubeVirtSpec
		allowAll bool
		want     Grant
		foreign  bool // anything outside netops
	}{
		{name: "default: own namespace", want: Grant{Namespaces: []string{"netops"}}},
		{name: "disabled: nothing", kubevirt: &hyperdhcpv1beta1.KubeVirtSpec{Enabled: new(false), Namespaces: []string{"consents"}}},
		{
			name:     "own namespace needs no consent; others do",
			kubevirt: &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{"silent", "netops", "consents", "any", "other", "missing"}},
			want:     Grant{Namespaces: []string{"any", "consents", "netops"}, Refused: []string{"missing", "other", "silent"}},
			foreign:  true,
		},
		{
			name:     "malformed annotation is reported",
			kubevirt: &hyperdhcpv1beta1.KubeVirtSpec{Namespaces: []string{"malformed"}},
			want: Grant{Refused: []string{"malformed"},
				Malformed: []string{`namespace malformed: annotation hyperdhcp.io/allow-servers: "lab" is not <namespace>/<server>`}},
		},
		{
			name:     "allNamespaces without the operator's flag: own namespace only",
			kubevirt: &hyperdhcpv1beta1.KubeVirtSpec{AllNamespaces: true},
			want:     Grant{Namespaces: []string{"netops"}, AllNamespacesRefused: true},
		},
		{
			name:     "allNamespaces with the operator's flag",
			kubevirt: &hyperdhcpv1beta1.KubeVirtSpec{AllNamespaces: true}, allowAll: true,
			want: Grant{Cluster: true}, foreign: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server := &hyperdhcpv1beta1.Server{ObjectMeta: metav1.ObjectMeta{Namespace: "netops", Name: "lab"},
				Spec: hyperdhcpv1beta1.ServerSpec{KubeVirt: tc.kubevirt}}
			got := Decide(server, annotations, tc.allowAll)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.foreign, got.Foreign("netops"))
		})
	}
}
