// Package zfaasv1 holds the generated protobuf and gRPC stubs of the zfaas
// invocation API (invoke.proto), of the node identity API (identity.proto)
// and of the worker API gateways use to run invocations on remote workers
// (worker.proto). Regenerate with `make generate`.
package zfaasv1

//go:generate protoc -I . --plugin=protoc-gen-go=../../../bin/protoc-gen-go --plugin=protoc-gen-go-grpc=../../../bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative invoke.proto
//go:generate protoc -I . --plugin=protoc-gen-go=../../../bin/protoc-gen-go --plugin=protoc-gen-go-grpc=../../../bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative identity.proto
//go:generate protoc -I . --plugin=protoc-gen-go=../../../bin/protoc-gen-go --plugin=protoc-gen-go-grpc=../../../bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative worker.proto
