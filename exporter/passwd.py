"""User lookups in a process's own /etc/passwd, such as the passwd file of its container.

The file is read through /proc/PID/root, and symlinks on the way are resolved
inside that root, the way the process itself would see them. Without that, an
absolute symlink such as /etc/passwd -> /usr/share/passwd would be followed in
the reader's root and return the host's file.
"""

from __future__ import annotations

import errno
import os
import stat

from exporter.procfs import ProcFS

# NOTE: only the passwd file is read. Other NSS sources named in the process's
# nsswitch.conf (LDAP, SSSD, NIS "+" lines in compat mode, nss_wrapper) are not
# consulted, so False from uid_known means "not in the file".

_MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS, after which path lookup fails with ELOOP

# A larger file is reported as unreadable instead of being read: a container
# could otherwise make the exporter read a sparse file of many gigabytes. 16 MiB
# is over 200,000 passwd lines of 80 bytes.
MAX_FILE_BYTES = 16 * 1024 * 1024


def parse_passwd(data: bytes) -> dict[int, str]:
    """Parse passwd(5) content into user names by UID, keeping the first entry of each UID.

    Like glibc, leading whitespace is skipped and empty lines and lines starting
    with "#" are ignored. A line counts when it has a name and a decimal UID of
    at most 10 digits in its third field, since a longer one exceeds any 32-bit
    UID. Names starting with "+" or "-" are NIS compat entries, not users, and
    are skipped. Names are decoded as UTF-8 with U+FFFD for invalid bytes.
    """
    users: dict[int, str] = {}
    for raw_line in data.split(b"\n"):
        line = raw_line.lstrip()
        if not line or line.startswith(b"#"):
            continue
        fields = line.split(b":")
        if len(fields) < 3:
            continue
        name, uid_field = fields[0], fields[2]
        # bytes.isdigit() accepts ASCII digits only, unlike int(), which also takes "+1" or " 1".
        # The length bound also keeps int() below its limit of 4300 digits, which raises.
        if not name or name[:1] in (b"+", b"-") or not uid_field.isdigit() or len(uid_field) > 10:
            continue
        users.setdefault(int(uid_field), name.decode("utf-8", errors="replace"))
    return users


def read_passwd(proc: ProcFS, pid: int) -> dict[int, str] | None:
    """Read and parse pid's /etc/passwd, or return None when it cannot be read.

    Unreadable covers a process that is gone, a reader without ptrace access to
    the process (needed to open /proc/PID/root), and a root without a regular
    file at etc/passwd.
    """
    data = read_file_in_root(proc, pid, "etc/passwd")
    return None if data is None else parse_passwd(data)


def read_passwd_at(pid_fd: int, cache: dict[tuple, dict[int, str]] | None = None) -> dict[int, str] | None:
    """Return read_passwd for the process whose /proc/PID directory is open as pid_fd.

    ``cache`` maps a file's identity (device, inode, size, modification and
    change times) to its parsed users, so processes that share a root parse
    their passwd file once.
    """
    try:
        file_fd = _open_in_root(pid_fd, "etc/passwd")
    except OSError:
        return None
    try:
        info = os.fstat(file_fd)
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if cache is not None and identity in cache:
            return cache[identity]
        users = parse_passwd(_read_all(file_fd))
    except OSError:
        return None
    finally:
        os.close(file_fd)
    if cache is not None:
        cache[identity] = users
    return users


def uid_known(proc: ProcFS, pid: int, uid: int) -> bool | None:
    """Return whether pid's /etc/passwd has an entry for uid, None when the file is unreadable."""
    users = read_passwd(proc, pid)
    return None if users is None else uid in users


def user_name(proc: ProcFS, pid: int, uid: int) -> str | None:
    """Return the name of uid in pid's /etc/passwd.

    None means either that the file has no entry for uid or that it is
    unreadable. uid_known distinguishes the two.
    """
    users = read_passwd(proc, pid)
    return None if users is None else users.get(uid)


def read_file_in_root(proc: ProcFS, pid: int, path: str) -> bytes | None:
    """Read a regular file at path inside pid's root directory, or return None.

    Symlinks and ".." are resolved inside that root, so no path can leave it.
    Return None when the process is gone, /proc/PID/root cannot be opened, the
    path does not resolve, it does not end at a regular file, or the file is
    larger than MAX_FILE_BYTES.
    """
    try:
        pid_fd = os.open(os.path.join(proc.root, str(pid)), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        file_fd = _open_in_root(pid_fd, path)
    except OSError:
        return None
    finally:
        os.close(pid_fd)
    try:
        return _read_all(file_fd)
    except OSError:
        return None
    finally:
        os.close(file_fd)


def _open_in_root(pid_fd: int, path: str) -> int:
    """Open path inside the root directory of the process whose /proc/PID is open as pid_fd."""
    root_fd = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pid_fd)
    try:
        return _open_beneath(root_fd, path)
    finally:
        os.close(root_fd)


def _open_beneath(root_fd: int, path: str) -> int:
    """Open path for reading relative to root_fd, treating root_fd as "/" for every lookup.

    Each component is opened with O_NOFOLLOW, and a symlink found on the way
    is read and its target walked from root_fd (absolute) or from its directory
    (relative). Raise OSError on failure.
    """
    # NOTE: every directory on the way stays open until the walk ends, and nothing
    # bounds the depth. A root whose symlinks lead through thousands of nested
    # directories therefore makes one walk keep thousands of fds open.
    directories = [root_fd]  # directories[-1] is the current directory, [0] the root
    pending = _components(path)  # in reverse, so pop() gives the next component
    symlinks = 0
    try:
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if name == "..":
                # ".." of the root is the root itself, as in a chroot.
                if len(directories) > 1:
                    os.close(directories.pop())
                continue
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directories[-1])
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                try:
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                symlinks += 1
                if symlinks > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                if target.startswith("/"):
                    while len(directories) > 1:
                        os.close(directories.pop())
                pending.extend(_components(target))
            elif pending:
                if not stat.S_ISDIR(mode):
                    os.close(fd)
                    raise OSError(errno.ENOTDIR, "not a directory", path)
                directories.append(fd)
            else:
                os.close(fd)
                return _open_regular(name, directories[-1], path)
        raise OSError(errno.EISDIR, "path resolves to a directory", path)
    finally:
        for fd in directories[1:]:
            os.close(fd)


def _open_regular(name: str, dir_fd: int, path: str) -> int:
    # O_NONBLOCK keeps open() from waiting for a writer if a FIFO replaced the file.
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd


def _components(path: str) -> list[str]:
    return [part for part in reversed(path.split("/")) if part]


def _read_all(fd: int) -> bytes:
    """Read the whole file, or raise OSError(EFBIG) when it is larger than MAX_FILE_BYTES."""
    if os.fstat(fd).st_size > MAX_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES} bytes")
    chunks = []
    size = 0
    # The file may grow while it is read, so the limit applies to the bytes read too.
    while chunk := os.read(fd, 65536):
        size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
