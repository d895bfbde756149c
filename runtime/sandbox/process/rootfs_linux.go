//go:build linux

package process

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

const (
	roBindAttrs  = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	roRemountFlg = unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV
	devShmMax    = 64 << 20
)

// setupRootfs builds the sandbox's root file system under c.RootDir and
// makes it the root of the calling process's (new) mount namespace. It runs
// in the sandbox init, as root, before privileges are dropped.
func setupRootfs(c *initConfig) error {
	// Nothing done here may propagate back to the host, and pivot_root
	// refuses shared mounts.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := c.RootDir
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m,nr_inodes=4096,mode=0755"); err != nil {
		return fmt.Errorf("mount root tmpfs on %s: %w", root, err)
	}

	// Host directories bound read-only; a symlink (as /bin -> usr/bin on
	// merged-/usr systems) is recreated as the same symlink.
	for _, p := range []string{"/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc"} {
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		dst := filepath.Join(root, p)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
		case fi.IsDir():
			if err := os.Mkdir(dst, 0o755); err != nil {
				return err
			}
			if err := bindReadOnly(p, dst); err != nil {
				return err
			}
		}
	}

	if err := setupDev(root); err != nil {
		return fmt.Errorf("set up /dev: %w", err)
	}

	proc := filepath.Join(root, "proc")
	if err := os.Mkdir(proc, 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	// Belt and braces: the function is not root, but keep the kernel's
	// knobs read-only even so.
	for _, p := range []string{"sys", "sysrq-trigger"} {
		pp := filepath.Join(proc, p)
		if _, err := os.Stat(pp); errors.Is(err, fs.ErrNotExist) {
			continue // e.g. no CONFIG_MAGIC_SYSRQ
		}
		if err := unix.Mount(pp, pp, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", pp, err)
		}
		if err := unix.Mount("", pp, "", roRemountFlg|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", pp, err)
		}
	}

	tmp := filepath.Join(root, sandbox.TmpDir)
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return err
	}
	opts := fmt.Sprintf("size=%d,mode=1777,uid=%d,gid=%d", c.TmpBytes, c.UID, c.GID)
	if err := unix.Mount("tmpfs", tmp, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount %s: %w", sandbox.TmpDir, err)
	}

	task, err := mountPoint(root, sandbox.TaskRoot, true)
	if err != nil {
		return err
	}
	if err := bindReadOnly(c.CodeDir, task); err != nil {
		return err
	}

	// Parents before children, so nested targets land on top.
	mounts := slices.Clone(c.Mounts)
	slices.SortFunc(mounts, func(a, b sandbox.Mount) int {
		return strings.Count(a.Target, "/") - strings.Count(b.Target, "/")
	})
	for _, m := range mounts {
		fi, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("mount source: %w", err)
		}
		dst, err := mountPoint(root, m.Target, fi.IsDir())
		if err != nil {
			return err
		}
		if err := bindReadOnly(m.Source, dst); err != nil {
			return err
		}
	}

	// Swap roots (pivot_root(".", ".") stacks the old root on the new one;
	// see pivot_root(2)) and drop the host's tree.
	if err := unix.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", roRemountFlg, ""); err != nil {
		return fmt.Errorf("remount / read-only: %w", err)
	}
	if err := unix.Mount("", "/dev", "", roRemountFlg|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount /dev read-only: %w", err)
	}
	return nil
}

func setupDev(root string) error {
	dev := filepath.Join(root, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	for _, name := range []string{"null", "zero", "full", "random", "urandom"} {
		src := "/dev/" + name
		fi, err := os.Stat(src)
		if err != nil || fi.Mode()&fs.ModeCharDevice == 0 {
			return fmt.Errorf("host %s is not a character device", src)
		}
		dst := filepath.Join(dev, name)
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
		if err != nil {
			return err
		}
		f.Close()
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", src, err)
		}
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("remount %s: %w", dst, err)
		}
	}
	links := [][2]string{
		{"/proc/self/fd", "fd"},
		{"/proc/self/fd/0", "stdin"},
		{"/proc/self/fd/1", "stdout"},
		{"/proc/self/fd/2", "stderr"},
	}
	for _, l := range links {
		if err := os.Symlink(l[0], filepath.Join(dev, l[1])); err != nil {
			return err
		}
	}
	shm := filepath.Join(dev, "shm")
	if err := os.Mkdir(shm, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("shm", shm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC,
		"size="+strconv.Itoa(devShmMax)+",mode=1777"); err != nil {
		return fmt.Errorf("mount shm: %w", err)
	}
	return nil
}

// bindReadOnly bind-mounts src (with its submounts) on dst and makes the
// whole tree read-only, nosuid and nodev. Without mount_setattr (Linux <
// 5.12) it falls back to a non-recursive bind so no submount stays
// writable.
func bindReadOnly(src, dst string) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, dst, err)
	}
	attr := unix.MountAttr{Attr_set: roBindAttrs}
	err := unix.MountSetattr(unix.AT_FDCWD, dst, unix.AT_RECURSIVE, &attr)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("make %s read-only: %w", dst, err)
	}
	if err := unix.Unmount(dst, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s: %w", dst, err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, dst, err)
	}
	if err := unix.Mount("", dst, "", roRemountFlg, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", dst, err)
	}
	return nil
}

// mountPoint creates target (an absolute sandbox path) under root as a
// directory or an empty file, and returns its host path. It refuses to
// traverse or end in a symlink, so a package cannot redirect a mount
// outside the new root.
func mountPoint(root, target string, dir bool) (string, error) {
	parts := strings.Split(strings.TrimPrefix(filepath.Clean(target), "/"), "/")
	cur := root
	for i, p := range parts {
		cur = filepath.Join(cur, p)
		last := i == len(parts)-1
		fi, err := os.Lstat(cur)
		switch {
		case err == nil:
			if fi.Mode()&fs.ModeSymlink != 0 {
				return "", fmt.Errorf("mount point %s: %s is a symlink", target, strings.TrimPrefix(cur, root))
			}
			if (!last || dir) && !fi.IsDir() {
				return "", fmt.Errorf("mount point %s: %s is not a directory", target, strings.TrimPrefix(cur, root))
			}
			if last && !dir && fi.IsDir() {
				return "", fmt.Errorf("mount point %s: is a directory, source is a file", target)
			}
		case errors.Is(err, fs.ErrNotExist):
			if !last || dir {
				err = os.Mkdir(cur, 0o755)
			} else {
				var f *os.File
				f, err = os.OpenFile(cur, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o644)
				if err == nil {
					f.Close()
				}
			}
			if err != nil {
				return "", fmt.Errorf("create mount point %s: %w", target, err)
			}
		default:
			return "", fmt.Errorf("mount point %s: %w", target, err)
		}
	}
	return cur, nil
}
