package workloadapi_test

import "net"

type netListenConfig struct{}

func (netListenConfig) listen(path string) (net.Listener, error) { return net.Listen("unix", path) }
