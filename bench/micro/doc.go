// Package micro holds Go micro-benchmarks of zfaas's hot paths — the warm
// pool's Acquire/Release, the registry's cached Resolve, the gateway's
// invoke handler and the identity CA's X509-SVID minting — each beside a baseline of the bare primitive it is built
// on, run by bench/run.sh. It has no production code, asserts no timings,
// and must never be imported.
package micro
