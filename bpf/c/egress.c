// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * zfaas egress enforcement: the programs the worker attaches once at the
 * parent cgroup of all function instances. Every map is keyed by the
 * instance's cgroup id, so a new instance costs map updates only.
 *
 *   cgroup/connect4, connect6   TCP and connected UDP destinations
 *   cgroup/sendmsg4, sendmsg6   unconnected UDP destinations
 *   cgroup/sock_create          only TCP and UDP inet sockets
 *   lsm/socket_create           only unix, netlink and inet families
 *   sockops + sk_msg            first write to an SNI-restricted destination
 *                               must be one complete ClientHello with an
 *                               allowed server_name
 *   cgroup_skb/egress           backstop: payload of an SNI-restricted socket
 *                               that never passed the sk_msg check is dropped
 *
 * Cgroups not in the enforced map pass untouched, unless deny_unknown is
 * set. Each program reads the instance's active generation once and looks
 * up only that generation's entries, so one program run never mixes two
 * policy revisions.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

#include "egress.h"

#ifndef AF_UNIX
#define AF_UNIX 1
#endif
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_NETLINK
#define AF_NETLINK 16
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define EPERM 1

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before the programs are loaded. */
volatile const __u32 instance_level = 0; /* cgroup level of instances; 0: current cgroup */
volatile const __u64 parent_cgid = 0;	 /* id of their parent cgroup */
volatile const __u8 deny_unknown = 0;	 /* deny instance cgroups that have no rules */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct cg_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} enforced SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct allow_key);
	__type(value, struct allow_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sni_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sni_names SEC(".maps");

/* Read by the loader only: who an instance is, for deny events. */
struct inst_meta {
	char spiffe_id[256];
	char revision[64];
	char instance[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct inst_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} instances SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sk_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_states SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sni_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* Deny events dropped because the ring buffer was full. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lost_events SEC(".maps");

/* Keeps struct deny_event in the BTF, for the generated Go type. */
const struct deny_event *unused_deny_event __attribute__((unused));

/* instance_cgid is the cgroup id rules are keyed by for the current task:
 * its ancestor at the instance level (so a nested cgroup cannot escape),
 * or 0 when the task is not below the instances' parent. */
static __always_inline __u64 instance_cgid(void)
{
	if (instance_level == 0)
		return bpf_get_current_cgroup_id();
	if (parent_cgid && bpf_get_current_ancestor_cgroup_id(instance_level - 1) != parent_cgid)
		return 0;
	return bpf_get_current_ancestor_cgroup_id(instance_level);
}

/* active_gen: 1 with *gen set when cgid is enforced, 0 to pass untouched,
 * -1 to deny (an instance without rules under deny_unknown). */
static __always_inline int active_gen(__u64 cgid, __u32 *gen)
{
	struct cg_state *st;

	if (!cgid)
		return 0;
	st = bpf_map_lookup_elem(&enforced, &cgid);
	if (!st)
		return deny_unknown ? -1 : 0;
	*gen = *(volatile __u32 *)&st->gen;
	return 1;
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost_events, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline struct deny_event *new_event(__u64 cgid, __u32 pid, __u8 reason, __u32 gen)
{
	struct deny_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->cgid = cgid;
	e->pid = pid;
	e->reason = reason;
	e->gen = gen;
	return e;
}

static __always_inline __u32 current_pid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

/* emit_dst sends a deny event for a destination held in an allow_key. */
static __always_inline void emit_dst(__u64 cgid, __u32 pid, __u8 reason, __u32 gen, const struct allow_key *k)
{
	struct deny_event *e = new_event(cgid, pid, reason, gen);

	if (!e)
		return;
	e->family = k->family;
	e->proto = k->proto;
	e->port = bpf_ntohs(k->port);
	__builtin_memcpy(e->addr, k->addr, sizeof(e->addr));
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void set_v4(struct allow_key *k, __u32 addr)
{
	k->family = 4;
	__builtin_memcpy(k->addr, &addr, 4);
}

/* set_v6 fills k from a sockaddr_in6 address; IPv4-mapped addresses are
 * looked up as IPv4, which is where a dual-stack socket connects. */
static __always_inline void set_v6(struct allow_key *k, __u32 a0, __u32 a1, __u32 a2, __u32 a3)
{
	if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0x0000ffff)) {
		set_v4(k, a3);
		return;
	}
	k->family = 6;
	__builtin_memcpy(k->addr, &a0, 4);
	__builtin_memcpy(k->addr + 4, &a1, 4);
	__builtin_memcpy(k->addr + 8, &a2, 4);
	__builtin_memcpy(k->addr + 12, &a3, 4);
}

static __always_inline struct allow_val *lookup_allow(struct allow_key *k, __u64 cgid, __u32 gen)
{
	k->prefixlen = ALLOW_FIXED_BITS + 128;
	k->gen = gen;
	k->cgid = cgid;
	return bpf_map_lookup_elem(&allow, k);
}

/* check_addr is the verdict of the connect and sendmsg hooks: 1 allow,
 * 0 deny (EPERM). k holds the destination. */
static __always_inline int check_addr(struct bpf_sock_addr *ctx, struct allow_key *k, int reason)
{
	__u64 cgid = instance_cgid();
	struct allow_val *v;
	struct sk_state *s;
	struct bpf_sock *sk;
	__u32 gen = 0;
	int st;

	st = active_gen(cgid, &gen);
	if (st == 0)
		return 1;
	k->proto = ctx->protocol;
	k->port = ctx->user_port;
	if (st < 0) {
		emit_dst(cgid, current_pid(), REASON_NO_RULES, 0, k);
		return 0;
	}
	if (k->proto != IPPROTO_TCP && k->proto != IPPROTO_UDP) {
		emit_dst(cgid, current_pid(), reason, gen, k);
		return 0;
	}
	v = lookup_allow(k, cgid, gen);
	if (!v) {
		emit_dst(cgid, current_pid(), reason, gen, k);
		return 0;
	}
	if (k->proto != IPPROTO_TCP || reason != REASON_CONNECT || v->sni_set == 0)
		return 1;

	/* SNI-restricted: mark the socket so sockops puts it in sni_socks
	 * and the backstop holds its payload until sk_msg has checked it. */
	sk = ctx->sk;
	if (!sk)
		return 0;
	s = bpf_sk_storage_get(&sk_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s) {
		emit_dst(cgid, current_pid(), reason, gen, k);
		return 0;
	}
	s->cgid = cgid;
	s->pid = current_pid();
	__builtin_memcpy(s->addr, k->addr, sizeof(s->addr));
	s->port = k->port;
	s->family = k->family;
	s->flags = SK_NEEDS_SNI;
	return 1;
}

SEC("cgroup/connect4")
int egress_connect4(struct bpf_sock_addr *ctx)
{
	struct allow_key k = {};

	set_v4(&k, ctx->user_ip4);
	return check_addr(ctx, &k, REASON_CONNECT);
}

SEC("cgroup/connect6")
int egress_connect6(struct bpf_sock_addr *ctx)
{
	struct allow_key k = {};

	set_v6(&k, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	return check_addr(ctx, &k, REASON_CONNECT);
}

SEC("cgroup/sendmsg4")
int egress_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct allow_key k = {};

	set_v4(&k, ctx->user_ip4);
	return check_addr(ctx, &k, REASON_SENDMSG);
}

SEC("cgroup/sendmsg6")
int egress_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct allow_key k = {};

	set_v6(&k, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	return check_addr(ctx, &k, REASON_SENDMSG);
}

static __always_inline void emit_socket(__u64 cgid, __u32 gen, __u32 family, __u32 type, __u32 protocol)
{
	struct deny_event *e = new_event(cgid, current_pid(), REASON_SOCKET, gen);

	if (!e)
		return;
	e->family = family;
	e->proto = protocol;
	e->port = type;
	bpf_ringbuf_submit(e, 0);
}

/* Inet sockets of enforced instances: TCP and UDP only (no raw, ICMP,
 * SCTP or MPTCP), whatever their rules. */
SEC("cgroup/sock_create")
int egress_sock_create(struct bpf_sock *ctx)
{
	__u64 cgid = instance_cgid();
	__u32 family, type, protocol, gen = 0;

	if (active_gen(cgid, &gen) == 0)
		return 1;
	family = ctx->family;
	type = ctx->type;
	protocol = ctx->protocol;
	if ((family == AF_INET || family == AF_INET6) &&
	    ((type == SOCK_STREAM && protocol == IPPROTO_TCP) || (type == SOCK_DGRAM && protocol == IPPROTO_UDP)))
		return 1;
	emit_socket(cgid, gen, family, type, protocol);
	return 0;
}

/* Families cgroup/sock_create never sees (it runs for inet sockets only):
 * packet, vsock, and everything else but unix and netlink. */
SEC("lsm/socket_create")
int BPF_PROG(egress_socket_create, int family, int type, int protocol, int kern)
{
	__u64 cgid;
	__u32 gen = 0;

	if (kern)
		return 0;
	if (family == AF_UNIX || family == AF_NETLINK || family == AF_INET || family == AF_INET6)
		return 0;
	cgid = instance_cgid();
	if (active_gen(cgid, &gen) == 0)
		return 0;
	emit_socket(cgid, gen, family, type, protocol);
	return -EPERM;
}

/* Established active sockets marked by connect go into sni_socks, where
 * sk_msg sees their writes. */
SEC("sockops")
int egress_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk;
	struct sk_state *s;
	__u64 cookie;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	s = bpf_sk_storage_get(&sk_states, sk, 0, 0);
	if (!s || !(s->flags & SK_NEEDS_SNI))
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	/* On failure the backstop keeps the payload from leaving. */
	bpf_sock_hash_update(skops, &sni_socks, &cookie, BPF_ANY);
	return 1;
}

static __always_inline int load8(void *data, void *end, __u32 off, __u8 *v)
{
	__u8 *p;

	if (off > HELLO_MAX + 16)
		return -1;
	p = (__u8 *)data + off;
	if ((void *)(p + 1) > end)
		return -1;
	*v = *p;
	return 0;
}

static __always_inline int load16(void *data, void *end, __u32 off, __u32 *v)
{
	__u8 hi, lo;

	if (load8(data, end, off, &hi) || load8(data, end, off + 1, &lo))
		return -1;
	*v = ((__u32)hi << 8) | lo;
	return 0;
}

/* fill_msg_event fills e for a refused write on the socket s. */
static __always_inline void fill_msg_event(struct deny_event *e, struct sk_state *s)
{
	e->family = s->family;
	e->proto = IPPROTO_TCP;
	e->port = bpf_ntohs(s->port);
	__builtin_memcpy(e->addr, s->addr, sizeof(e->addr));
}

/* msg_deny sends the event of a refused write and refuses it. */
static __always_inline int msg_deny(struct sk_state *s, __u32 gen, __u8 reason)
{
	struct deny_event *e = new_event(s->cgid, current_pid(), reason, gen);

	if (e) {
		fill_msg_event(e, s);
		bpf_ringbuf_submit(e, 0);
	}
	return SK_DROP;
}

static __always_inline int sni_char(__u8 *c)
{
	if (*c >= 'A' && *c <= 'Z')
		*c += 'a' - 'A';
	return (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '.' || *c == '_';
}

/* The name is checked and its wildcard form built in place by bpf_loop
 * callbacks, which the verifier checks once whatever the name. */
struct name_ctx {
	struct sni_key key;
	__u32 len; /* bytes of key.name in use */
	__u32 dot; /* index of the first '.', 0 when none */
	__u32 bad; /* a byte that no allowed name has */
};

/* check_name lower-cases name[i] and notes the first dot and bad bytes. */
static long check_name(__u64 i, void *arg)
{
	struct name_ctx *n = arg;
	__u8 c;

	if (i >= n->len || i >= SNI_NAME_MAX)
		return 1;
	c = n->key.name[i];
	if (!sni_char(&c))
		n->bad = 1;
	n->key.name[i] = c;
	if (c == '.' && n->dot == 0)
		n->dot = i;
	return 0;
}

/* shift_name: name[1+i] = name[dot+i], dropping the first label (dot >= 1,
 * so the copy never overtakes itself), zero filled behind. */
static long shift_name(__u64 i, void *arg)
{
	struct name_ctx *n = arg;
	__u64 src = n->dot + i;
	char c = 0;

	if (i + 1 >= SNI_NAME_MAX)
		return 1;
	if (src < SNI_NAME_MAX)
		c = n->key.name[src];
	n->key.name[i + 1] = c;
	return 0;
}

/*
 * The first write of a socket connected to an SNI-restricted destination
 * must be exactly: one TLS handshake record holding one complete
 * ClientHello, without encrypted_client_hello, whose server_name is in the
 * destination's SNI set (exactly, or as "*." + the name without its first
 * label). Anything else fails the write with EACCES. Once passed, the
 * socket is not inspected again.
 */
SEC("sk_msg")
int egress_sk_msg(struct sk_msg_md *msg)
{
	struct name_ctx w = {};
	struct allow_key ak = {};
	struct deny_event *e;
	struct allow_val *v;
	struct cg_state *st;
	struct sk_state *s;
	struct bpf_sock *sk;
	void *data, *end;
	__u32 size, pull, rec_len, hs_len, hello_end, off, ext_end, len, type, i, gen, set;
	__u32 sni_off, sni_len = 0;
	__u8 b;

	sk = msg->sk;
	if (!sk)
		return SK_DROP;
	s = bpf_sk_storage_get(&sk_states, sk, 0, 0);
	if (!s || !(s->flags & SK_NEEDS_SNI))
		return SK_PASS;
	if (s->flags & SK_VERIFIED) {
		bpf_msg_apply_bytes(msg, 1 << 30);
		return SK_PASS;
	}

	/* The destination under the instance's active generation. */
	st = bpf_map_lookup_elem(&enforced, &s->cgid);
	if (!st)
		return msg_deny(s, 0, REASON_NO_RULES);
	gen = *(volatile __u32 *)&st->gen;
	ak.family = s->family;
	ak.proto = IPPROTO_TCP;
	ak.port = s->port;
	__builtin_memcpy(ak.addr, s->addr, sizeof(ak.addr));
	v = lookup_allow(&ak, s->cgid, gen);
	if (!v)
		return msg_deny(s, gen, REASON_CONNECT);
	set = v->sni_set;
	if (set == 0)
		goto allow;

	size = msg->size;
	pull = size < HELLO_MAX + 9 ? size : HELLO_MAX + 9;
	if (pull < 1 || bpf_msg_pull_data(msg, 0, pull, 0))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	data = (void *)(long)msg->data;
	end = (void *)(long)msg->data_end;

	/* Record header: handshake, length. */
	if (load8(data, end, 0, &b))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	if (b != 0x16)
		return msg_deny(s, gen, REASON_NOT_TLS);
	if (load16(data, end, 3, &rec_len))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	if (5 + rec_len > size)
		return msg_deny(s, gen, REASON_INCOMPLETE);
	/* Handshake header: ClientHello, length within this record. */
	if (load8(data, end, 5, &b))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	if (b != 0x01)
		return msg_deny(s, gen, REASON_NOT_TLS);
	if (load8(data, end, 6, &b) || load16(data, end, 7, &hs_len))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	hs_len |= (__u32)b << 16;
	if (hs_len + 4 > rec_len)
		return msg_deny(s, gen, REASON_INCOMPLETE);
	hello_end = 9 + hs_len;
	if (hello_end > HELLO_MAX || load8(data, end, hello_end - 1, &b))
		return msg_deny(s, gen, REASON_INCOMPLETE);

	/* version(2) random(32), then session id, cipher suites, compression. */
	off = 9 + 2 + 32;
	if (load8(data, end, off, &b))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	off += 1 + b;
	if (load16(data, end, off, &len))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	off += 2 + len;
	if (off > HELLO_MAX || load8(data, end, off, &b))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	off += 1 + b;
	if (off >= hello_end)
		return msg_deny(s, gen, REASON_NO_SNI);
	if (load16(data, end, off, &len))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	off += 2;
	ext_end = off + len;
	if (ext_end > hello_end)
		return msg_deny(s, gen, REASON_INCOMPLETE);

	for (i = 0; i < EXT_MAX; i++) {
		if (off >= ext_end)
			break;
		if (off > HELLO_MAX)
			return msg_deny(s, gen, REASON_INCOMPLETE);
		if (load16(data, end, off, &type) || load16(data, end, off + 2, &len))
			return msg_deny(s, gen, REASON_INCOMPLETE);
		off += 4;
		if (type == 0xfe0d)
			return msg_deny(s, gen, REASON_ECH);
		if (type == 0) {
			__u32 nlen;

			/* server_name_list(2) name_type(1)=host_name name(2+n) */
			if (sni_len || load8(data, end, off + 2, &b) || load16(data, end, off + 3, &nlen))
				return msg_deny(s, gen, REASON_INCOMPLETE);
			if (b != 0 || nlen == 0 || nlen > 253 || nlen + 5 > len)
				return msg_deny(s, gen, REASON_NO_SNI);
			s->sni_off = off + 5;
			s->sni_len = nlen;
			sni_len = 1;
		}
		off += len;
		if (off > ext_end)
			return msg_deny(s, gen, REASON_INCOMPLETE);
	}
	if (off < ext_end)
		return msg_deny(s, gen, REASON_INCOMPLETE);
	if (!sni_len)
		return msg_deny(s, gen, REASON_NO_SNI);

	/* The name into the key, then lower case. */
	sni_off = s->sni_off;
	sni_len = s->sni_len;
	if (sni_off > HELLO_MAX || sni_len == 0 || sni_len > 253 || data + sni_off + sni_len > end)
		return msg_deny(s, gen, REASON_INCOMPLETE);
	if (bpf_probe_read_kernel(w.key.name, sni_len, data + sni_off))
		return msg_deny(s, gen, REASON_INCOMPLETE);
	w.len = sni_len;
	bpf_loop(SNI_NAME_MAX, check_name, &w, 0);
	w.key.gen = gen;
	w.key.set = set;
	w.key.cgid = s->cgid;
	if (!w.bad && bpf_map_lookup_elem(&sni_names, &w.key))
		goto allow;

	/* Refused unless the wildcard form matches: the event is prepared
	 * now, while the key still holds the name as sent. */
	e = new_event(s->cgid, current_pid(), REASON_SNI, gen);
	if (e) {
		fill_msg_event(e, s);
		__builtin_memcpy(e->sni, w.key.name, EVENT_SNI_MAX);
		e->sni_len = sni_len < EVENT_SNI_MAX ? sni_len : EVENT_SNI_MAX;
	}
	if (!w.bad) {
		if (w.dot > 0) {
			bpf_loop(SNI_NAME_MAX, shift_name, &w, 0);
			w.key.name[0] = '*';
			if (bpf_map_lookup_elem(&sni_names, &w.key)) {
				if (e)
					bpf_ringbuf_discard(e, 0);
				goto allow;
			}
		}
	}
	if (e)
		bpf_ringbuf_submit(e, 0);
	return SK_DROP;

allow:
	__sync_fetch_and_or(&s->flags, SK_VERIFIED);
	bpf_msg_apply_bytes(msg, 1 << 30);
	return SK_PASS;
}

/* Backstop: TCP payload of an SNI-restricted socket leaves only after
 * sk_msg passed its first write. Data queued before the socket reached
 * sni_socks (a send blocked in connect, TCP Fast Open, a full sockhash)
 * is dropped, so such a connection stalls instead of leaking. */
SEC("cgroup_skb/egress")
int egress_skb(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct sk_state *s;
	__u32 hdr, flags;
	__u8 b;

	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;
	s = bpf_sk_storage_get(&sk_states, sk, 0, 0);
	if (!s)
		return 1;
	flags = s->flags;
	if (!(flags & SK_NEEDS_SNI) || (flags & SK_VERIFIED))
		return 1;
	if (sk->family == AF_INET) {
		if (bpf_skb_load_bytes(skb, 0, &b, 1))
			return 0;
		hdr = (b & 0x0f) * 4;
	} else {
		if (bpf_skb_load_bytes(skb, 6, &b, 1) || b != IPPROTO_TCP)
			return 0;
		hdr = 40;
	}
	if (bpf_skb_load_bytes(skb, hdr + 12, &b, 1))
		return 0;
	hdr += (b >> 4) * 4;
	if (skb->len <= hdr)
		return 1;
	if (!(__sync_fetch_and_or(&s->flags, SK_REPORTED) & SK_REPORTED)) {
		struct deny_event *e = new_event(s->cgid, s->pid, REASON_UNVERIFIED, 0);

		if (e) {
			e->family = s->family;
			e->proto = IPPROTO_TCP;
			e->port = bpf_ntohs(s->port);
			__builtin_memcpy(e->addr, s->addr, sizeof(e->addr));
			bpf_ringbuf_submit(e, 0);
		}
	}
	return 0;
}
