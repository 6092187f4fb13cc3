//! Sockets of the generator: one UDP socket per address family for SNMP, one unprivileged ICMP
//! datagram ("ping") socket per family, and one non-blocking TCP socket per check.

use std::{
    io,
    mem::size_of,
    net::{IpAddr, SocketAddr, UdpSocket as StdUdp},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

/// Frame bytes the kernel counts on top of an ICMP message (Ethernet + IP header).
pub const ICMP_V4_OVERHEAD: u64 = 14 + 20;
pub const ICMP_V6_OVERHEAD: u64 = 14 + 40;
/// ... and on top of a UDP payload (Ethernet + IP + UDP header).
pub const UDP_V4_OVERHEAD: u64 = 14 + 20 + 8;
pub const UDP_V6_OVERHEAD: u64 = 14 + 40 + 8;

pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;

pub fn udp_overhead(a: &IpAddr) -> u64 {
    if a.is_ipv4() {
        UDP_V4_OVERHEAD
    } else {
        UDP_V6_OVERHEAD
    }
}

pub fn icmp_overhead(a: &IpAddr) -> u64 {
    if a.is_ipv4() {
        ICMP_V4_OVERHEAD
    } else {
        ICMP_V6_OVERHEAD
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a live c_int of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn new_socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory preconditions; the fd is owned from here on.
    let fd =
        cvt(unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Large receive buffers: at high rates replies come in bursts.
const RCVBUF: libc::c_int = 8 << 20;

/// A non-blocking UDP socket bound to an ephemeral port of the family.
pub fn snmp_socket(v6: bool) -> io::Result<StdUdp> {
    let s = if v6 {
        StdUdp::bind("[::]:0")?
    } else {
        StdUdp::bind("0.0.0.0:0")?
    };
    s.set_nonblocking(true)?;
    let _ = set_int_opt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
    Ok(s)
}

/// An unprivileged ICMP echo socket (`SOCK_DGRAM`, `IPPROTO_ICMP[V6]`). The kernel sets the echo
/// identifier to the socket's own and delivers only the replies carrying it; it also fills in
/// the checksum. Needs the caller's group in `net.ipv4.ping_group_range` (for both families).
pub fn ping_socket(v6: bool) -> io::Result<StdUdp> {
    let fd = if v6 {
        new_socket(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6)
    } else {
        new_socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)
    }
    .map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            io::Error::new(
                e.kind(),
                format!(
                    "ICMP datagram socket refused ({e}): put this group in \
                     net.ipv4.ping_group_range (e.g. `sysctl -w net.ipv4.ping_group_range=\"0 \
                     2147483647\"` in the poller's namespace, or --set-ping-group-range)"
                ),
            )
        } else {
            e
        }
    })?;
    let _ = set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
    // A ping socket is a datagram socket: send_to/recv_from work as for UDP.
    Ok(StdUdp::from(fd))
}

/// An ICMP echo request message (header + data); the kernel fills id and checksum.
pub fn echo_request(v6: bool, seq: u16, data_len: usize) -> Vec<u8> {
    let mut m = vec![0u8; 8 + data_len];
    m[0] = if v6 {
        ICMP6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    };
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in m[8..].iter_mut().enumerate() {
        *b = (i & 0xff) as u8;
    }
    m
}

/// The sequence number of an echo reply, None if `msg` is not one.
pub fn echo_reply_seq(v6: bool, msg: &[u8]) -> Option<u16> {
    let want = if v6 {
        ICMP6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    if msg.len() < 8 || msg[0] != want || msg[1] != 0 {
        return None;
    }
    Some(u16::from_be_bytes([msg[6], msg[7]]))
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// How a TCP check ended.
#[derive(Debug)]
pub enum TcpOutcome {
    /// SYN-ACK: the port answered.
    Open,
    /// RST: the node answered, nothing listens.
    Refused,
    /// An ICMP error ended the attempt (unreachable): an error, no response.
    Unreachable(io::Error),
    /// No answer within the timeout.
    Timeout,
    /// Could not even start (local error); nothing was sent.
    Local(io::Error),
}

/// Starts a non-blocking connect: the socket (SO_LINGER 0, so closing sends RST and leaves no
/// TIME_WAIT behind at high rates) and whether it connected at once.
pub fn tcp_start(target: SocketAddr) -> io::Result<(OwnedFd, bool)> {
    let domain = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = new_socket(domain, libc::SOCK_STREAM, 0)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, pointer to a live linger of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    })?;
    let (ss, len) = sockaddr(target);
    // SAFETY: valid fd; ss holds a sockaddr of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r == 0 {
        return Ok((fd, true));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok((fd, false))
    } else {
        Err(e)
    }
}

/// SO_ERROR of a socket whose connect finished.
pub fn so_error(fd: RawFd) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, pointers to a live c_int and its length.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

/// SYNs the kernel sent for this connect so far: the first plus its retransmissions
/// (TCP_INFO `tcpi_total_retrans`), so a check that waited past the initial RTO (1 s) counts
/// every SYN the kernel programs see.
pub fn tcp_syns(fd: RawFd) -> u64 {
    // SAFETY: all-zero is a valid tcp_info.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, pointers to a live tcp_info and its length.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return 1;
    }
    1 + u64::from(info.tcpi_total_retrans)
}

/// Maps a finished connect's SO_ERROR to an outcome.
pub fn tcp_outcome(err: i32) -> TcpOutcome {
    match err {
        0 => TcpOutcome::Open,
        libc::ECONNREFUSED => TcpOutcome::Refused,
        libc::ETIMEDOUT => TcpOutcome::Timeout,
        e @ (libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::EHOSTDOWN
        | libc::ENETDOWN
        | libc::EACCES
        | libc::EPERM) => TcpOutcome::Unreachable(io::Error::from_raw_os_error(e)),
        e => TcpOutcome::Local(io::Error::from_raw_os_error(e)),
    }
}
