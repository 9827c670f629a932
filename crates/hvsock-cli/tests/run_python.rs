//! Python's `socket.AF_VSOCK`, unmodified, over hvsock through `hvsock
//! run`, in both roles: echo, large sends, `makefile`, `settimeout`,
//! non-blocking connect with `select` (success and refusal through
//! SO_ERROR), MSG_PEEK, socket options and the local-CID ioctl, errors
//! (unbound port, impossible CIDs, datagrams, socketpair, a port taken),
//! and the seccomp filter refusing a raw `socket(AF_VSOCK)` syscall.

mod run_support;

use std::time::Duration;

use run_support::{require, Daemon};

/// The program: `server PORT` echoes forever; `client PEER_CID PORT
/// LOCAL_CID BAD_CID` runs every check and prints `all ok`.
const SCRIPT: &str = r#"# Python socket.AF_VSOCK, unmodified, under `hvsock run`.
#   server PORT                         echo server (forever)
#   client PEER_CID PORT LOCAL_CID BAD_CID
import errno, fcntl, hashlib, os, select, socket, struct, sys, threading

AF_VSOCK = socket.AF_VSOCK
IOCTL_VM_SOCKETS_GET_LOCAL_CID = 0x7B9


def server(port):
    s = socket.socket(AF_VSOCK, socket.SOCK_STREAM)
    s.bind((socket.VMADDR_CID_ANY, port))
    s.listen()
    assert s.getsockname() == (socket.VMADDR_CID_ANY, port), s.getsockname()
    while True:
        c, addr = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()


def echo(c):
    with c:
        while True:
            d = c.recv(1 << 16)
            if not d:
                return
            c.sendall(d)


def expect_errno(code, f, *args):
    try:
        f(*args)
    except OSError as e:
        assert e.errno == code, (f, args, errno.errorcode.get(e.errno), errno.errorcode[code])
        return
    raise AssertionError(f"{f} {args} did not fail with {errno.errorcode[code]}")


def check(name, f):
    f()
    print("ok", name, flush=True)


def client(peer, port, local_cid, bad_cid):
    addr = (peer, port)

    def echo_small():
        with socket.socket(AF_VSOCK, socket.SOCK_STREAM) as s:
            s.connect(addr)
            assert s.getpeername() == addr, s.getpeername()
            assert s.getsockname()[0] == local_cid, s.getsockname()
            assert s.family == AF_VSOCK
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == AF_VSOCK
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
            s.sendall(b"hello")
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                d = s.recv(100)
                if not d:
                    break
                got += d
            assert got == b"hello", got

    def large():
        data = os.urandom(8 << 20)
        with socket.socket(AF_VSOCK, socket.SOCK_STREAM) as s:
            s.connect(addr)
            def send():
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            t = threading.Thread(target=send)
            t.start()
            h = hashlib.sha256()
            n = 0
            while True:
                d = s.recv(1 << 20)
                if not d:
                    break
                h.update(d)
                n += len(d)
            t.join()
            assert n == len(data) and h.digest() == hashlib.sha256(data).digest()

    def makefile():
        with socket.socket(AF_VSOCK, socket.SOCK_STREAM) as s:
            s.connect(addr)
            f = s.makefile("rwb")
            for i in range(1000):
                f.write(b"line %d\n" % i)
            f.flush()
            s.shutdown(socket.SHUT_WR)
            lines = f.readlines()
            assert lines == [b"line %d\n" % i for i in range(1000)], len(lines)
            f.close()

    def settimeout():
        with socket.socket(AF_VSOCK, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(addr)
            s.settimeout(0.2)
            try:
                s.recv(10)
                raise AssertionError("recv with nothing sent returned")
            except socket.timeout:
                pass
            s.settimeout(10)
            s.sendall(b"after timeout")
            assert s.recv(100) == b"after timeout"

    def nonblocking_connect():
        with socket.socket(AF_VSOCK, socket.SOCK_STREAM) as s:
            s.setblocking(False)
            e = s.connect_ex(addr)
            assert e in (0, errno.EINPROGRESS), errno.errorcode.get(e)
            _, w, _ = select.select([], [s], [], 20)
            assert w == [s]
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            assert s.getpeername() == addr
            s.setblocking(True)
            s.sendall(b"nb")
            assert s.recv(10) == b"nb"

    def nonblocking_refused():
        with socket.socket(AF_VSOCK, socket.SOCK_STREAM) as s:
            s.setblocking(False)
            e = s.connect_ex((peer, port + 1))
            assert e in (errno.EINPROGRESS, errno.ECONNREFUSED, errno.ECONNRESET), errno.errorcode.get(e)
            if e == errno.EINPROGRESS:
                _, w, _ = select.select([], [s], [], 20)
                assert w == [s]
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                assert err in (errno.ECONNREFUSED, errno.ECONNRESET), errno.errorcode.get(err)

    def peek():
        with socket.socket(AF_VSOCK, socket.SOCK_STREAM) as s:
            s.connect(addr)
            s.sendall(b"peekaboo")
            assert s.recv(4, socket.MSG_PEEK | socket.MSG_WAITALL) == b"peek"
            got = b""
            while len(got) < 8:
                got += s.recv(8 - len(got))
            assert got == b"peekaboo", got

    def errors():
        s = socket.socket(AF_VSOCK, socket.SOCK_STREAM)
        expect_errno(errno.ECONNREFUSED, s.connect, (peer, port + 1))
        s.close()
        s = socket.socket(AF_VSOCK, socket.SOCK_STREAM)
        expect_errno(errno.ENETUNREACH if peer == 2 else errno.ENODEV, s.connect, (bad_cid, port))
        s.close()
        expect_errno(errno.ENODEV, socket.socket, AF_VSOCK, socket.SOCK_DGRAM)
        expect_errno(errno.EOPNOTSUPP, socket.socketpair, AF_VSOCK, socket.SOCK_STREAM)
        a = socket.socket(AF_VSOCK, socket.SOCK_STREAM)
        b = socket.socket(AF_VSOCK, socket.SOCK_STREAM)
        a.bind((socket.VMADDR_CID_ANY, port + 2))
        expect_errno(errno.EADDRINUSE, b.bind, (socket.VMADDR_CID_ANY, port + 2))
        expect_errno(errno.EADDRNOTAVAIL, b.bind, (local_cid + 1000, port + 3))
        expect_errno(errno.ENOTCONN, b.getpeername)
        a.close()
        b.close()

    def options():
        with socket.socket(AF_VSOCK, socket.SOCK_STREAM) as s:
            # CPython reads and writes AF_VSOCK options as 64-bit integers.
            assert s.getsockopt(AF_VSOCK, socket.SO_VM_SOCKETS_BUFFER_SIZE) == 262144
            s.setsockopt(AF_VSOCK, socket.SO_VM_SOCKETS_BUFFER_SIZE, 65536)
            assert s.getsockopt(AF_VSOCK, socket.SO_VM_SOCKETS_BUFFER_SIZE) == 65536
            assert s.getsockopt(AF_VSOCK, socket.SO_VM_SOCKETS_BUFFER_MAX_SIZE) == 262144
            cid = struct.unpack("I", fcntl.ioctl(s.fileno(), IOCTL_VM_SOCKETS_GET_LOCAL_CID, b"\0" * 4))[0]
            assert cid == local_cid, cid
            s.connect(addr)
            s.sendall(b"small rings")
            assert s.recv(100) == b"small rings"

    def seccomp():
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        nr = {"x86_64": 41, "aarch64": 198}[os.uname().machine]
        r = libc.syscall(nr, AF_VSOCK, socket.SOCK_STREAM, 0)
        assert r == -1 and ctypes.get_errno() == errno.EAFNOSUPPORT, (r, ctypes.get_errno())

    for name, f in [("echo", echo_small), ("large", large), ("makefile", makefile),
                    ("settimeout", settimeout), ("nonblocking_connect", nonblocking_connect),
                    ("nonblocking_refused", nonblocking_refused), ("peek", peek),
                    ("errors", errors), ("options", options), ("seccomp", seccomp)]:
        check(name, f)
    print("all ok", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    else:
        client(*map(int, sys.argv[2:6]))
"#;

fn run_pair(server_vm: Option<&str>, client_vm: Option<&str>, port: u32) {
    require("python3");
    let d = Daemon::start(&["alpha"]);
    let script = d.dir.path().join("vsock_check.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let script = script.to_str().unwrap();
    let alpha = d.cid("alpha");
    let port_arg = port.to_string();
    let _server = d.spawn(server_vm, "python3", &[script, "server", &port_arg]);
    d.wait_listening(port);
    // In the guest the peer is the host (2) and CID 5 is unreachable; on
    // the host the peer is the VM and no VM has CID alpha + 100.
    let (peer, local, bad) = match client_vm {
        Some(_) => (2, alpha, 5),
        None => (alpha, 2, alpha + 100),
    };
    let args = [peer, port, local, bad].map(|n| n.to_string());
    let mut all = vec![script, "client"];
    all.extend(args.iter().map(String::as_str));
    let out = d
        .spawn(client_vm, "python3", &all)
        .wait_output(Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all ok"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_guest_server_host_client() {
    run_pair(Some("alpha"), None, 7100);
}

#[test]
fn python_host_server_guest_client() {
    run_pair(None, Some("alpha"), 7200);
}
