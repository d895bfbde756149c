// Package policydv1 is the wire API of the policy engine role (policyd):
// the generated protobuf and gRPC stubs of policyd.proto (the
// zfaas.policyd.v1.Decisions service), and the JSON types that the policy
// engine, the gateway's /v1/policy routes and the CLI exchange (revisions,
// activations, node status, decision-log records).
//
// Types here are plain data; they must never import a role package.
// Regenerate the stubs with `make generate`.
package policydv1

//go:generate protoc -I . --plugin=protoc-gen-go=../../../bin/protoc-gen-go --plugin=protoc-gen-go-grpc=../../../bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative policyd.proto
