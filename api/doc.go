// Package api holds the wire types shared by zfaas roles and clients: the JSON
// bodies of the gateway's control and invoke APIs, and (in sub-packages) the
// generated protobuf stubs.
//
// Types here are plain data. They carry no behaviour beyond validation of their
// own fields, and they must never import a role package (gateway, runtime,
// policyd, identity).
package api
