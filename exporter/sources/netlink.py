"""Process fork, exec and exit events from the kernel's proc connector (cn_proc).

The proc connector multicasts one netlink message per process event to group
CN_IDX_PROC of NETLINK_CONNECTOR sockets. Each datagram contains netlink messages
laid out as in the Linux uapi headers ``linux/netlink.h`` (``struct nlmsghdr``),
``linux/connector.h`` (``struct cn_msg``) and ``linux/cn_proc.h`` (``struct
proc_event``), in native byte order.

Listening needs the initial network namespace, because the kernel's connector
socket lives there, and the initial PID and user namespaces, because the kernel
ignores subscriptions from any other. On recent kernels ``cn_bind`` in
drivers/connector/connector.c lets any user bind to CN_IDX_PROC, and on Linux 6.18
UID 65534 with no capabilities receives events. Older kernels need CAP_NET_ADMIN.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

from exporter.events import (
    Event,
    EventsLost,
    ProcessExeced,
    ProcessExited,
    ProcessForked,
    ProcessInfo,
)
from exporter.sources.base import Emit, SourceUnavailable

log = logging.getLogger(__name__)

NETLINK_CONNECTOR = 11  # linux/netlink.h
SO_RCVBUFFORCE = 33  # asm-generic/socket.h, missing from Python's socket module
CN_IDX_PROC = 1  # linux/connector.h
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1  # linux/cn_proc.h, enum proc_cn_mcast_op
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_NONE = 0x00000000  # the kernel's acknowledgement of a LISTEN or IGNORE
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000
NLMSG_DONE = 3  # the type the connector gives every message it sends
NLMSG_ALIGNTO = 4

DEFAULT_RCVBUF = 8 * 1024 * 1024

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid: 16 bytes
_CN_MSG = struct.Struct("=IIIIHH")  # id.idx, id.val, seq, ack, len, flags: 20 bytes
_PROC_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns: 16 bytes
_FORK = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
_EXEC = struct.Struct("=ii")  # process_pid, process_tgid
_EXIT = struct.Struct("=iiII")  # process_pid, process_tgid, exit_code, exit_signal
_EXIT_PARENT = struct.Struct("=ii")  # parent_pid, parent_tgid, absent on old kernels
_ACK = struct.Struct("=I")  # err, a positive errno value or 0

_POLL_TIMEOUT_MS = 200
_RECV_SIZE = 65536
_DRAIN_MAX = 512  # datagrams read per poll wakeup before stop is checked again
_VERIFY_TIMEOUT = 1.0
_LOG_INTERVAL = 60.0

# The reader thread runs at this nice value when the process may lower it
# (CAP_SYS_NICE), because a waking reader at nice 0 often waits behind the process
# that just exec'd on the same CPU. In 200 runs of `/bin/kill -0 PID`, which lives
# about 0.9 ms after exec, on a 2-CPU Linux 6.18 VM, the reader read argv in time
# 145 times at nice 0 and 200 times at nice -10.
# NOTE: the reader also needs the GIL, so while another thread of a busy process
# holds it, the argv of a command that exits within about 1 ms can still be missed.
READER_NICE = -10
READER_RT_PRIORITY = 1  # the lowest real-time priority, above every normal task


@dataclass(frozen=True, slots=True)
class ForkRecord:
    """A PROC_EVENT_FORK message. For a new thread, child_pid differs from child_tgid."""

    timestamp_ns: int
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int


@dataclass(frozen=True, slots=True)
class ExecRecord:
    """A PROC_EVENT_EXEC message."""

    timestamp_ns: int
    process_pid: int
    process_tgid: int


@dataclass(frozen=True, slots=True)
class ExitRecord:
    """A PROC_EVENT_EXIT message, sent for every exiting thread.

    ``exit_code`` is the wait status. ``exit_signal`` is the signal the parent gets
    (normally SIGCHLD), not the signal that killed the task. The parent fields are
    None when an older kernel sent the shorter layout without them.
    """

    timestamp_ns: int
    process_pid: int
    process_tgid: int
    exit_code: int
    exit_signal: int
    parent_pid: int | None = None
    parent_tgid: int | None = None


@dataclass(frozen=True, slots=True)
class AckRecord:
    """The kernel's reply to a PROC_CN_MCAST_LISTEN or IGNORE request."""

    seq: int
    err: int


@dataclass(frozen=True, slots=True)
class MalformedRecord:
    """A part of a datagram that could not be decoded, at byte ``offset``."""

    offset: int
    reason: str


ProcRecord = ForkRecord | ExecRecord | ExitRecord | AckRecord | MalformedRecord


class _RateLimitedLog:
    """Logger for one kind of repeated message, at most one line per interval.

    The next line logged reports how many were suppressed in between.
    """

    def __init__(self, level: int, interval: float = _LOG_INTERVAL) -> None:
        self._level = level
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def __call__(self, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        log.log(self._level, message, *args, exc_info=exc_info)
        self._next = now + self._interval
        self._suppressed = 0


def decode_datagram(data: bytes) -> list[ProcRecord]:
    """Decode every netlink message in one datagram read from the connector socket.

    Event types other than FORK, EXEC, EXIT and the acknowledgement are skipped.
    Bad input never raises. Each undecodable part becomes a MalformedRecord, and
    decoding stops at a netlink header that does not fit the datagram.
    """
    records: list[ProcRecord] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _NLMSGHDR.size:
            records.append(MalformedRecord(offset, "truncated netlink header"))
            break
        length, msg_type, _flags, _seq, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            reason = f"netlink length {length} does not fit {len(data) - offset} bytes"
            records.append(MalformedRecord(offset, reason))
            break
        if msg_type == NLMSG_DONE:
            payload = data[offset + _NLMSGHDR.size : offset + length]
            record = _decode_connector(payload, offset)
            if record is not None:
                records.append(record)
        offset += _align(length)
    return records


def _align(length: int) -> int:
    return (length + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)


def _decode_connector(payload: bytes, offset: int) -> ProcRecord | None:
    if len(payload) < _CN_MSG.size:
        return MalformedRecord(offset, f"cn_msg truncated to {len(payload)} bytes")
    idx, val, seq, _ack, length, _flags = _CN_MSG.unpack_from(payload)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return MalformedRecord(offset, f"connector id {idx}:{val} is not cn_proc")
    data = payload[_CN_MSG.size : _CN_MSG.size + length]
    if len(data) < length or length < _PROC_EVENT.size:
        return MalformedRecord(offset, f"proc_event truncated to {len(data)} bytes")
    what, _cpu, timestamp_ns = _PROC_EVENT.unpack_from(data)
    body = data[_PROC_EVENT.size :]
    try:
        return _decode_event(what, timestamp_ns, seq, body)
    except struct.error:
        return MalformedRecord(offset, f"event {what:#x} truncated to {len(body)} bytes")


def _decode_event(what: int, timestamp_ns: int, seq: int, body: bytes) -> ProcRecord | None:
    if what == PROC_EVENT_FORK:
        return ForkRecord(timestamp_ns, *_FORK.unpack_from(body))
    if what == PROC_EVENT_EXEC:
        return ExecRecord(timestamp_ns, *_EXEC.unpack_from(body))
    if what == PROC_EVENT_EXIT:
        fields = _EXIT.unpack_from(body)
        parent: tuple[int | None, int | None] = (None, None)
        if len(body) >= _EXIT.size + _EXIT_PARENT.size:
            parent = _EXIT_PARENT.unpack_from(body, _EXIT.size)
        return ExitRecord(timestamp_ns, *fields, *parent)
    if what == PROC_EVENT_NONE:
        return AckRecord(seq, *_ACK.unpack_from(body))
    return None


def encode_mcast_request(op: int, *, seq: int = 0, port_id: int = 0) -> bytes:
    """Build the netlink message that sends PROC_CN_MCAST_LISTEN or IGNORE to cn_proc."""
    op_bytes = struct.pack("=I", op)
    connector = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, 0, len(op_bytes), 0)
    length = _NLMSGHDR.size + len(connector) + len(op_bytes)
    header = _NLMSGHDR.pack(length, NLMSG_DONE, 0, seq, port_id)
    return header + connector + op_bytes


class NetlinkSource:
    """Source of process fork, exec and exit events from the proc connector.

    ``read_info`` is called on the reader thread for every new process and every
    exec, before the next datagram is read, because a short-lived command such as
    ``kill`` can exit within a millisecond and its argv is gone after that.
    ``rcvbuf`` is the socket receive buffer in bytes; the kernel caps it at
    ``net.core.rmem_max`` unless the process has CAP_NET_ADMIN. ``read_fork_info``,
    when given, replaces ``read_info`` for forks: a child shows its parent's argv
    until it execs, so a cheaper read can do.
    """

    name = "netlink"

    def __init__(
        self,
        read_info: Callable[[int], ProcessInfo | None] | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        read_fork_info: Callable[[int], ProcessInfo | None] | None = None,
    ) -> None:
        self._read_info = read_info
        self._read_fork_info = read_fork_info or read_info
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self.malformed = 0  # undecodable parts of datagrams since open()
        self.overruns = 0  # ENOBUFS errors since open()
        self._log_malformed = _RateLimitedLog(logging.WARNING)
        self._log_overrun = _RateLimitedLog(logging.WARNING)
        self._log_read_info = _RateLimitedLog(logging.WARNING)

    def open(self) -> None:
        """Subscribe to process events and check that they really arrive.

        Raises SourceUnavailable when the socket cannot be created or bound, or
        when no event for a probe child arrives within 1 s. A second call closes
        the socket of the first.
        """
        self.close()
        sock = _create_socket(self._rcvbuf)
        try:
            seq = random.getrandbits(32)
            _send_request(sock, PROC_CN_MCAST_LISTEN, seq)
            _verify_events(sock, seq)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.malformed = 0
        self.overruns = 0
        log.info(
            "Listening to the proc connector with a %d byte receive buffer.",
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit events until ``stop`` is set.

        Raises OSError when the socket fails. The calling thread's nice value is
        set to READER_NICE when permitted.
        """
        sock = self._sock
        if sock is None:
            raise RuntimeError("NetlinkSource.run() called before open()")
        _raise_thread_priority()
        # A blocking read with a receive timeout costs one system call per
        # datagram, where poll(), a read and a read that fails with EAGAIN cost three.
        sock.setblocking(True)
        timeout = struct.pack("@ll", 0, _POLL_TIMEOUT_MS * 1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        while not stop.is_set():
            self._drain(sock, emit)

    def close(self) -> None:
        """Unsubscribe and close the socket. A second call does nothing."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            _send_request(sock, PROC_CN_MCAST_IGNORE, 0)
        except SourceUnavailable as error:
            log.warning("Unsubscribing from the proc connector failed: %s", error)
        sock.close()
        log.info("Closed the proc connector socket.")

    def _drain(self, sock: socket.socket, emit: Emit) -> None:
        """Read and emit up to _DRAIN_MAX datagrams; return early when none is queued."""
        for _ in range(_DRAIN_MAX):
            try:
                data, (port_id, _groups) = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                self._report_overrun(emit)
                continue
            if port_id != 0:
                self._report_malformed(f"datagram from port {port_id}, not the kernel")
                continue
            for record in decode_datagram(data):
                self._dispatch(record, emit)

    def _dispatch(self, record: ProcRecord, emit: Emit) -> None:
        event = self._to_event(record)
        if event is not None:
            emit(event)

    def _to_event(self, record: ProcRecord) -> Event | None:
        if isinstance(record, ForkRecord):
            if record.child_pid != record.child_tgid:
                return None
            pid = record.child_tgid
            info = self._info(pid, self._read_fork_info)
            return ProcessForked(_seconds(record), pid, record.parent_tgid, info)
        if isinstance(record, ExecRecord):
            pid = record.process_tgid
            return ProcessExeced(_seconds(record), pid, self._info(pid, self._read_info))
        if isinstance(record, ExitRecord):
            # NOTE: a leader thread that exits before the others (pthread_exit in
            # main) is reported here as the exit of its whole process.
            if record.process_pid != record.process_tgid:
                return None
            return ProcessExited(_seconds(record), record.process_tgid, record.exit_code)
        if isinstance(record, MalformedRecord):
            self._report_malformed(f"{record.reason} at byte {record.offset}")
        return None

    def _info(self, pid: int, reader: Callable[[int], ProcessInfo | None] | None) -> ProcessInfo | None:
        if reader is None:
            return None
        try:
            return reader(pid)
        except Exception:  # an injected reader must not stop the event stream
            self._log_read_info("Reading /proc for pid %d failed.", pid, exc_info=True)
            return None

    def _report_overrun(self, emit: Emit) -> None:
        self.overruns += 1
        self._log_overrun(
            "The proc connector socket overran (ENOBUFS), so events were lost "
            "(%d overruns since open).",
            self.overruns,
        )
        emit(EventsLost(time.monotonic(), self.name))

    def _report_malformed(self, reason: str) -> None:
        self.malformed += 1
        self._log_malformed(
            "Skipped a malformed proc connector message: %s (%d since open).",
            reason,
            self.malformed,
        )


def _raise_thread_priority() -> None:
    """Run the reader thread as SCHED_RR priority 1 when allowed, else at READER_NICE.

    With every CPU busy, even nice -10 lost the argv of 1 to 12 of 90 short `kill`
    commands on a 2-CPU VM; a real-time reader preempts the busy tasks at once.
    """
    thread_id = threading.get_native_id()
    try:
        os.sched_setscheduler(thread_id, os.SCHED_RR, os.sched_param(READER_RT_PRIORITY))
        return
    except OSError as error:
        log.debug("Setting SCHED_RR failed for netlink reader thread %d: %s", thread_id, error.strerror)
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, READER_NICE)
    except OSError as error:
        log.info(
            "Could not set nice %d on netlink reader thread %d (%s), so the argv of "
            "commands that exit within about a millisecond may be missed.",
            READER_NICE,
            thread_id,
            error.strerror,
        )


def _seconds(record: ForkRecord | ExecRecord | ExitRecord) -> float:
    return record.timestamp_ns / 1e9


def _create_socket(rcvbuf: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    except OSError as error:
        raise SourceUnavailable(
            f"creating a NETLINK_CONNECTOR socket failed: {error.strerror}. "
            "The kernel needs CONFIG_CONNECTOR and CONFIG_PROC_EVENTS."
        ) from error
    try:
        sock.bind((0, CN_IDX_PROC))
        _set_rcvbuf(sock, rcvbuf)
        _attach_filter(sock)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        hint = ""
        if error.errno == errno.EPERM:
            hint = ". This kernel needs CAP_NET_ADMIN for it."
        raise SourceUnavailable(
            f"binding to the proc connector group failed: {error.strerror}{hint}"
        ) from error
    return sock


# Classic BPF (linux/filter.h) run by the kernel on each message before it is
# queued: thread forks and exits (pid != tgid) and the event types that are not
# decoded (uid, gid, sid, ptrace, comm, coredump) never reach the reader, and do
# not fill the receive buffer. A JVM starts and ends dozens of threads, each a
# fork and an exit event. Offsets are those of decode_datagram's layouts; loads
# are big-endian, so each constant is the field's native bytes read that way.
SO_ATTACH_FILTER = 26  # asm-generic/socket.h
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JEQ_X = 0x1D
_BPF_TAX = 0x07
_BPF_RET_K = 0x06
_EVENT_OFFSET = _NLMSGHDR.size + _CN_MSG.size
_WHAT = _EVENT_OFFSET
_DATA = _EVENT_OFFSET + _PROC_EVENT.size
_SOCK_FILTER = struct.Struct("@HBBI")


def _filter_program() -> list[tuple[int, int, int, int]]:
    """Return the instructions (code, jt, jf, k) that keep process events and acknowledgements."""
    accept, drop = 13, 14  # instruction indexes of the two returns below
    fork_check, exit_check = 5, 9

    def jump(at: int, target: int) -> int:
        return target - at - 1

    return [
        (_BPF_LD_W_ABS, 0, 0, _WHAT),  # 0
        (_BPF_JEQ_K, jump(1, accept), 0, socket.htonl(PROC_EVENT_EXEC)),  # 1
        (_BPF_JEQ_K, jump(2, fork_check), 0, socket.htonl(PROC_EVENT_FORK)),  # 2
        (_BPF_JEQ_K, jump(3, exit_check), 0, socket.htonl(PROC_EVENT_EXIT)),  # 3
        (_BPF_JEQ_K, jump(4, accept), jump(4, drop), socket.htonl(PROC_EVENT_NONE)),  # 4
        (_BPF_LD_W_ABS, 0, 0, _DATA + 8),  # 5: fork child_pid
        (_BPF_TAX, 0, 0, 0),  # 6
        (_BPF_LD_W_ABS, 0, 0, _DATA + 12),  # 7: fork child_tgid
        (_BPF_JEQ_X, jump(8, accept), jump(8, drop), 0),  # 8
        (_BPF_LD_W_ABS, 0, 0, _DATA),  # 9: exit process_pid
        (_BPF_TAX, 0, 0, 0),  # 10
        (_BPF_LD_W_ABS, 0, 0, _DATA + 4),  # 11: exit process_tgid
        (_BPF_JEQ_X, jump(12, accept), jump(12, drop), 0),  # 12
        (_BPF_RET_K, 0, 0, 0xFFFFFFFF),  # 13: accept the whole message
        (_BPF_RET_K, 0, 0, 0),  # 14: drop it
    ]


def _attach_filter(sock: socket.socket) -> None:
    """Attach the kernel-side filter; without it the reader drops those events itself."""
    program = _filter_program()
    instructions = ctypes.create_string_buffer(b"".join(_SOCK_FILTER.pack(*op) for op in program))
    fprog = struct.pack("@HL", len(program), ctypes.addressof(instructions))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as error:
        log.info("Could not attach the proc connector filter (%s); thread events are dropped after reading.",
                 error.strerror)


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        # Without CAP_NET_ADMIN the kernel caps the buffer at net.core.rmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        log.warning(
            "Setting a %d byte proc connector receive buffer needs CAP_NET_ADMIN; "
            "the buffer is capped at net.core.rmem_max, so bursts of process events "
            "may overrun it and be recovered only by the next full scan.",
            size,
        )


def _send_request(sock: socket.socket, op: int, seq: int) -> None:
    port_id = sock.getsockname()[0]
    request = encode_mcast_request(op, seq=seq, port_id=port_id)
    try:
        sock.sendto(request, (0, 0))
    except OSError as error:
        raise SourceUnavailable(
            f"sending request {op} to the proc connector failed: {error.strerror}. "
            "Is the exporter in a private network namespace?"
        ) from error


def _verify_events(sock: socket.socket, seq: int) -> None:
    """Start a child that exits at once and wait for its EXIT event.

    The kernel silently ignores a subscription from a private PID or user
    namespace, so only an arriving event shows that the subscription works.
    """
    child = _start_probe_child()
    deadline = time.monotonic() + _VERIFY_TIMEOUT
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while (remaining := deadline - time.monotonic()) > 0:
        if not poller.poll(remaining * 1000):
            continue
        if _probe_exit_seen(sock, seq, child):
            _discard_pending(sock)
            return
    raise SourceUnavailable(
        f"subscribed to the proc connector but no event for probe child {child} "
        f"arrived within {_VERIFY_TIMEOUT:g} s. Is the exporter in a private PID, "
        "user or network namespace?"
    )


def _start_probe_child() -> int:
    try:
        pid = os.fork()
    except OSError as error:
        raise SourceUnavailable(f"starting a probe child failed: {error}") from error
    if pid == 0:
        os._exit(0)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # SIGCHLD is ignored in this process, so the kernel reaped the child
    return pid


def _discard_pending(sock: socket.socket) -> None:
    """Read and drop what is queued, which also ends an overrun that began in open().

    While an overrun lasts, netlink drops further messages without raising ENOBUFS
    again, and reading the queue down ends it.
    """
    for _ in range(_DRAIN_MAX):
        try:
            sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                message = f"reading the proc connector failed: {error}"
                raise SourceUnavailable(message) from error


def _probe_exit_seen(sock: socket.socket, seq: int, child: int) -> bool:
    try:
        data = sock.recv(_RECV_SIZE)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as error:
        if error.errno == errno.ENOBUFS:
            return True  # the kernel overran this socket, so events do arrive
        raise SourceUnavailable(f"reading the proc connector failed: {error}") from error
    for record in decode_datagram(data):
        if isinstance(record, AckRecord) and record.seq == seq and record.err:
            raise SourceUnavailable(
                f"the proc connector rejected the subscription: {os.strerror(record.err)}"
            )
        if isinstance(record, ExitRecord) and record.process_tgid == child:
            return True
    return False
