package xdsclient

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// This file is the client's side of Envoy's Aggregated Discovery Service
// without go-control-plane: the two messages of the stream, written and
// read with protowire, and the gRPC codec that carries them. On the wire it
// is the same protocol (the tests hold it to go-control-plane's types); it
// only leaves out the generated Envoy API, whose registration at start-up
// was most of the sidecar's resident memory.

// adsMethod is the full gRPC method of the ADS stream.
const adsMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

var adsStream = &grpc.StreamDesc{
	StreamName:    "StreamAggregatedResources",
	ServerStreams: true,
	ClientStreams: true,
}

// discoveryRequest is envoy.service.discovery.v3.DiscoveryRequest, the
// fields the client sends.
type discoveryRequest struct {
	VersionInfo   string     // 1
	NodeID        string     // 2: node.id (1); no node when empty
	ResourceNames []string   // 3
	TypeURL       string     // 4
	ResponseNonce string     // 5
	ErrorDetail   *rpcStatus // 6: a NACK's reason; nil for an ACK
}

// rpcStatus is google.rpc.Status without details.
type rpcStatus struct {
	Code    int32  // 1
	Message string // 2
}

// marshal writes r in field-number order, as protobuf-go does.
func (r *discoveryRequest) marshal() []byte {
	var b []byte
	b = appendString(b, 1, r.VersionInfo)
	if r.NodeID != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, appendString(nil, 1, r.NodeID))
	}
	for _, n := range r.ResourceNames {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, n)
	}
	b = appendString(b, 4, r.TypeURL)
	b = appendString(b, 5, r.ResponseNonce)
	if s := r.ErrorDetail; s != nil {
		var sb []byte
		if s.Code != 0 {
			sb = protowire.AppendTag(sb, 1, protowire.VarintType)
			sb = protowire.AppendVarint(sb, uint64(int64(s.Code)))
		}
		sb = appendString(sb, 2, s.Message)
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendBytes(b, sb)
	}
	return b
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// discoveryResponse is envoy.service.discovery.v3.DiscoveryResponse, the
// fields the client reads.
type discoveryResponse struct {
	VersionInfo string     // 1
	Resources   []resource // 2: google.protobuf.Any
	TypeURL     string     // 4
	Nonce       string     // 5
}

// resource is a google.protobuf.Any.
type resource struct {
	TypeURL string // 1
	Value   []byte // 2
}

// unmarshal reads a DiscoveryResponse: the fields the client does not use
// (canary, control_plane, resource_errors) and unknown ones are skipped
// unread, and an error means the envelope is not well-formed protobuf (the
// stream then fails, as with a generated decoder). Whether the resources
// are usable is for the client to decide, and NACK; this only opens the
// envelope.
func (r *discoveryResponse) unmarshal(b []byte) error {
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 1:
			return readString(v, &r.VersionInfo, "version_info")
		case 2:
			var a resource
			err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					return readString(v, &a.TypeURL, "resource type_url")
				case num == 2 && typ == protowire.BytesType:
					a.Value = v
				}
				return nil
			})
			r.Resources = append(r.Resources, a)
			return err
		case 4:
			return readString(v, &r.TypeURL, "type_url")
		case 5:
			return readString(v, &r.Nonce, "nonce")
		}
		return nil
	})
}

func readString(b []byte, dst *string, what string) error {
	if !utf8.Valid(b) {
		return fmt.Errorf("%s: invalid UTF-8", what)
	}
	*dst = string(b)
	return nil
}

// eachField calls fn with every field of the message in b; v is the
// content of a length-delimited field, nil for others. Later occurrences
// of a singular field overwrite earlier ones, as in protobuf.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, typ, v); err != nil {
			return err
		}
	}
	return nil
}

// adsCodec is the gRPC codec of the ADS stream: discoveryRequest out,
// discoveryResponse in. Its name is "proto", the encoding it speaks, so
// the stream's content type is application/grpc+proto, the explicit form
// of gRPC's default that every gRPC server reads as protobuf.
type adsCodec struct{}

var _ encoding.CodecV2 = adsCodec{}

func (adsCodec) Name() string { return "proto" }

func (adsCodec) Marshal(v any) (mem.BufferSlice, error) {
	r, ok := v.(*discoveryRequest)
	if !ok {
		return nil, fmt.Errorf("ads codec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(r.marshal())}, nil
}

func (adsCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*discoveryResponse)
	if !ok {
		return fmt.Errorf("ads codec: cannot unmarshal into %T", v)
	}
	// Materialize copies out of gRPC's pooled buffers, so the resources
	// may keep referring to it.
	if err := r.unmarshal(data.Materialize()); err != nil {
		return fmt.Errorf("ads codec: malformed DiscoveryResponse: %w", err)
	}
	return nil
}
