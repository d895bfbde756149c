/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structures shared by the egress programs (egress.c) and the Go loader
 * (bpf/maps.go encodes them by hand; keep both in step).
 */
#ifndef ZFAAS_EGRESS_H
#define ZFAAS_EGRESS_H

#include <linux/types.h>

/* Longest SNI host name kept in a key (RFC 1035: 253) plus padding. */
#define SNI_NAME_MAX 256
/* Bytes of the SNI copied into a deny event. */
#define EVENT_SNI_MAX 64
/* Largest ClientHello record inspected; bigger ones are refused. */
#define HELLO_MAX 8192
/* Extensions scanned before the verdict; more are refused. */
#define EXT_MAX 32

/* Why a deny event was raised (enum reason in Go). */
enum deny_reason {
	REASON_CONNECT = 1,	/* connect(): destination not allowed */
	REASON_SENDMSG = 2,	/* sendmsg() on unconnected UDP: destination not allowed */
	REASON_SOCKET = 3,	/* socket(): family/type/protocol refused */
	REASON_SNI = 4,		/* ClientHello SNI not allowed */
	REASON_NO_SNI = 5,	/* ClientHello without server_name */
	REASON_ECH = 6,		/* ClientHello with encrypted_client_hello */
	REASON_INCOMPLETE = 7,	/* first write not one complete ClientHello */
	REASON_NOT_TLS = 8,	/* first write is not a TLS ClientHello */
	REASON_UNVERIFIED = 9,	/* payload sent before the ClientHello check ran */
	REASON_NO_RULES = 10,	/* instance cgroup without rules (deny_unknown) */
};

/* enforced map value: the instance's active rule generation. */
struct cg_state {
	__u32 gen;
	__u32 flags;
};

/*
 * allow map key (LPM trie). prefixlen counts bits after itself: gen, cgid,
 * port, proto and family (128 bits) are always matched in full, then
 * prefix bits of addr. 4 bytes of tail padding (key size 40).
 */
struct allow_key {
	__u32 prefixlen;
	__u32 gen;
	__u64 cgid;
	__u16 port;	/* network byte order */
	__u8 proto;	/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;	/* 4 or 6 */
	__u8 addr[16];	/* IPv4 in the first 4 bytes */
};

#define ALLOW_FIXED_BITS 128

/* allow map value. */
struct allow_val {
	__u32 sni_set;	/* 0: no SNI check; else id of the SNI set */
	__u32 flags;
};

/* sni map key: one allowed name (lower case, zero padded) of a set. */
struct sni_key {
	__u32 gen;
	__u32 set;
	__u64 cgid;
	char name[SNI_NAME_MAX];
};

/* Per-socket state, kept in socket local storage. */
#define SK_NEEDS_SNI 1	/* connected to an SNI-restricted destination */
#define SK_VERIFIED 2	/* first write passed the ClientHello check */
#define SK_REPORTED 4	/* an unverified-payload event was sent */
struct sk_state {
	__u64 cgid;
	__u32 flags;
	__u32 pid;	/* the connecting process */
	__u8 addr[16];	/* destination, as in allow_key */
	__u16 port;	/* network byte order */
	__u8 family;
	__u8 pad;
	/* sk_msg scratch: where the server name is in the message being
	 * checked (the socket is locked meanwhile). Kept here so that the
	 * verifier treats them as plain values, not as every offset the
	 * parser may have reached. */
	__u32 sni_off;
	__u32 sni_len;
};

/* Ring buffer record. */
struct deny_event {
	__u64 cgid;
	__u32 pid;
	__u8 family;	/* 4, 6, or the socket family for REASON_SOCKET */
	__u8 proto;
	__u16 port;	/* host byte order; socket type for REASON_SOCKET */
	__u8 addr[16];
	__u8 reason;
	__u8 sni_len;	/* bytes of sni used */
	__u16 pad;
	__u32 gen;	/* generation in force; 0 when none */
	char sni[EVENT_SNI_MAX];
};

#endif
