package bpf

// The programs are compiled with clang into egress_bpfel.o and embedded by
// the generated egress_bpfel.go; both are committed, so building zfaas needs
// no clang. Regenerate with `make generate` (needs clang, llvm and
// libbpf-dev: apt-get install clang llvm libbpf-dev).
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" -target bpfel -type deny_event -go-package bpf egress c/egress.c
