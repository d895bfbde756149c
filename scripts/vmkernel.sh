#!/usr/bin/env bash
# vmkernel.sh — fetch Debian's amd64 kernel package with apt and extract what
# the micro-VM sandbox boots: the uncompressed vmlinux (QEMU's -M microvm
# loads an ELF kernel directly) and the virtio modules the guest agent loads
# (virtio-serial over virtio-mmio, and vsock for hosts with vhost-vsock).
#
# Usage: scripts/vmkernel.sh [DEST]   (default /var/cache/zfaas/vmkernel)
# Env:   ZFAAS_VMKERNEL_PKG  the linux-image package to use
#                            (default: what linux-image-amd64 depends on)
#
# Result in DEST (nothing of it is committed):
#   vmlinux        the kernel as an ELF image
#   modules/*.ko   the modules, uncompressed
#   modules.load   module file names, one a line, in load (dependency) order
#   modules.extra  the EXTRA modules not in modules.load, in load order
#   VERSION        the package name and version
# Running it again with the same package does nothing.
set -euo pipefail

DEST=${1:-/var/cache/zfaas/vmkernel}
# Modules the guest agent needs; their dependencies are added.
# 9p and 9pnet_virtio share the host's /usr, /usr/lib and /etc read-only
# with the guest, so interpreted runtimes (python3, node) run in the VM.
WANT=(virtio_mmio virtio_console vmw_vsock_virtio_transport 9pnet_virtio 9p)
# Extracted but not loaded by the agent (listed in modules.extra): AF_VSOCK
# loopback inside one guest, which the vsock transport's test uses where the
# host has no vhost-vsock.
EXTRA=(vsock_loopback)
# LAYOUT changes when the extracted set changes, so caches are refreshed.
LAYOUT=3

die() { echo "vmkernel: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is missing (apt-get install $2)"; }
need apt-get apt
need dpkg-deb dpkg
need xz xz-utils

pkg=${ZFAAS_VMKERNEL_PKG:-}
if [ -z "$pkg" ]; then
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	if [ -z "$pkg" ]; then
		apt-get update -qq || die "apt-get update failed"
		pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	fi
fi
[ -n "$pkg" ] || die "cannot resolve the kernel package behind linux-image-amd64"
ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
stamp="$pkg $ver layout-$LAYOUT"
if [ -f "$DEST/VERSION" ] && [ "$(cat "$DEST/VERSION")" = "$stamp" ] && [ -s "$DEST/vmlinux" ]; then
	echo "vmkernel: $DEST already has $stamp"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt's _apt user downloads into it
(cd "$work" && apt-get download -q "$pkg" >/dev/null) || die "apt-get download $pkg failed"
dpkg-deb -x "$work"/*.deb "$work/x"
vmlinuz=$(ls "$work"/x/boot/vmlinuz-*)
kver=${vmlinuz##*/vmlinuz-}
moddir="$work/x/lib/modules/$kver"

# extract-vmlinux: a bzImage is a boot stub followed by the compressed ELF.
# Try every xz, zstd and gzip stream start in the file until one
# decompresses to an ELF image (decompressors stop at the stream's end and
# complain about trailing data, which is expected here).
out="$work/vmlinux"
is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }
try() { # try MAGIC DECOMPRESSOR...
	local magic=$1; shift
	local off
	for off in $(LC_ALL=C grep -obUaP "$magic" "$vmlinuz" | cut -d: -f1); do
		tail -c +$((off + 1)) "$vmlinuz" | "$@" >"$out" 2>/dev/null || true
		if [ -s "$out" ] && is_elf "$out"; then return 0; fi
	done
	return 1
}
try '\xfd7zXZ\x00' xz -dc ||
	{ command -v zstd >/dev/null && try '\x28\xb5\x2f\xfd' zstd -dc; } ||
	try '\x1f\x8b\x08' gzip -dc ||
	die "no compressed ELF kernel found in $vmlinuz"

# Module dependencies from each module's .modinfo strings (depends=a,b).
declare -A path deps
while IFS= read -r -d '' f; do
	base=${f##*/}
	name=${base%%.ko*}
	path[$name]=$f
done < <(find "$moddir/kernel" -name '*.ko*' -print0)
modinfo_depends() { # file → comma-separated names
	local f=$1
	case $f in
	*.ko.xz) xz -dc "$f" ;;
	*.ko.zst) zstd -dc "$f" ;;
	*.ko.gz) gzip -dc "$f" ;;
	*) cat "$f" ;;
	esac | tr '\0' '\n' | awk -F= '$1 == "depends" {print $2; exit}'
}
order=()
declare -A seen
visit() {
	local n=${1//-/_} d
	[ -n "${seen[$n]:-}" ] && return 0
	seen[$n]=1
	[ -n "${path[$n]:-}" ] || die "module $n not in $pkg"
	for d in $(modinfo_depends "${path[$n]}" | tr ',' ' '); do visit "$d"; done
	order+=("$n")
}
for m in "${WANT[@]}"; do visit "$m"; done
nload=${#order[@]}
for m in "${EXTRA[@]}"; do visit "$m"; done

stage="$work/stage"
mkdir -p "$stage/modules"
for n in "${order[@]}"; do
	f=${path[$n]}
	case $f in
	*.ko.xz) xz -dc "$f" >"$stage/modules/$n.ko" ;;
	*.ko.zst) zstd -dc "$f" >"$stage/modules/$n.ko" ;;
	*.ko.gz) gzip -dc "$f" >"$stage/modules/$n.ko" ;;
	*) cp "$f" "$stage/modules/$n.ko" ;;
	esac
done
for i in "${!order[@]}"; do
	if [ "$i" -lt "$nload" ]; then list=modules.load; else list=modules.extra; fi
	echo "${order[$i]}.ko" >>"$stage/$list"
done
touch "$stage/modules.extra"
mv "$out" "$stage/vmlinux"

echo "$stamp" >"$stage/VERSION"

mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.new"
cp -r "$stage" "$DEST.new"
chmod -R go-w "$DEST.new"
rm -rf "$DEST"
mv "$DEST.new" "$DEST"
echo "vmkernel: $stamp → $DEST (kernel $kver; modules: ${order[*]})"
