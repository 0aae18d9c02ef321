//! The set of addresses in use in one subnet, IPv4 or IPv6 of any prefix length.
//!
//! An `AddrSet` maps the subnet's addresses onto the ordinals of a [`Bitmap`] (ordinal 0 is the
//! network address) and keeps the serial-allocation cursor with them, so both are persisted
//! together (libnetwork loses its cursor on restart). It knows subnets and ranges, but not pools,
//! reservations or errors: those are the pool rules' business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::Error;
use super::bitmap::Bitmap;
use super::codec::{Reader, corrupt, put_varint};

/// Version byte of the encoding written by [`AddrSet::encode`].
const FORMAT_V1: u8 = 1;

/// The allocated addresses of one subnet and its serial cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSet {
    // Invariant: masked (no host bits), and `bitmap.last()` is its highest ordinal.
    net: IpNet,
    bitmap: Bitmap,
    // Invariant: the ordinal a serial allocation tries first; set to one past every dynamic
    // allocation (wrapping to 0 past the top), as libnetwork's `curr` is.
    cursor: u128,
}

/// An inclusive range of ordinals inside a subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrdRange {
    pub first: u128,
    pub last: u128,
}

impl OrdRange {
    /// Returns the number of ordinals, saturating at `u128::MAX` for the whole IPv6 space.
    #[must_use]
    pub fn size(self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }
}

impl AddrSet {
    /// Returns an empty set over the addresses of `net` (host bits are ignored).
    #[must_use]
    pub fn new(net: IpNet) -> Self {
        let net = net.trunc();
        Self {
            net,
            bitmap: Bitmap::new(host_mask(net)),
            cursor: 0,
        }
    }

    /// Returns the subnet.
    #[must_use]
    pub fn net(&self) -> IpNet {
        self.net
    }

    /// Returns the underlying bitmap (read-only: stores persist its runs).
    #[must_use]
    pub fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }

    /// Returns the serial-allocation cursor.
    #[must_use]
    pub fn cursor(&self) -> u128 {
        self.cursor
    }

    /// Returns the ordinal of `addr`, or `None` when it lies outside the subnet.
    #[must_use]
    pub fn ordinal(&self, addr: IpAddr) -> Option<u128> {
        // The prefix is masked, so its address is its first; an address of the same family
        // lies inside exactly when its offset from there is at most the last ordinal (an
        // address below it wraps far past). Cheaper than `IpNet::contains`, which
        // recomputes both ends of the prefix: perf put that at a fifth of filling a /16.
        if addr.is_ipv4() != matches!(self.net, IpNet::V4(_)) {
            return None;
        }
        let offset = addr_bits(addr).wrapping_sub(addr_bits(self.net.addr()));
        (offset <= self.bitmap.last()).then_some(offset)
    }

    /// Returns the address at `ordinal` (which must be at most the subnet's last ordinal).
    #[must_use]
    pub fn addr(&self, ordinal: u128) -> IpAddr {
        let bits = addr_bits(self.net.network()) | (ordinal & self.bitmap.last());
        match self.net {
            // A v4 subnet's addresses fit in 32 bits, so the truncation keeps every bit.
            #[allow(clippy::cast_possible_truncation)]
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
        }
    }

    /// Returns the ordinals of `range`, a prefix inside the subnet, or the whole subnet.
    #[must_use]
    pub fn range(&self, range: Option<IpNet>) -> OrdRange {
        let whole = OrdRange {
            first: 0,
            last: self.bitmap.last(),
        };
        let Some(r) = range else { return whole };
        match (self.ordinal(r.network()), self.ordinal(r.broadcast())) {
            (Some(first), Some(last)) => OrdRange { first, last },
            // Not inside the subnet: the pool rules never let such a range in.
            _ => OrdRange { first: 1, last: 0 },
        }
    }

    /// Tells whether `addr` is in use; `None` when it lies outside the subnet.
    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> Option<bool> {
        self.ordinal(addr).map(|o| self.bitmap.contains(o))
    }

    /// Marks `addr` in use; returns `Some(false)` if it already was, `None` if it lies outside
    /// the subnet.
    pub fn insert(&mut self, addr: IpAddr) -> Option<bool> {
        let o = self.ordinal(addr)?;
        Some(self.bitmap.insert(o))
    }

    /// Marks `addr` free; returns `Some(false)` if it already was, `None` if it lies outside
    /// the subnet.
    pub fn remove(&mut self, addr: IpAddr) -> Option<bool> {
        let o = self.ordinal(addr)?;
        Some(self.bitmap.remove(o))
    }

    /// Marks in use and returns the lowest free address of `range` or, when `serial`, the next
    /// free one at or after the cursor, wrapping around; `None` when the range is full.
    /// Either way the cursor moves past the address returned.
    pub fn insert_any(&mut self, range: OrdRange, serial: bool) -> Option<IpAddr> {
        let cursor = serial.then_some(self.cursor);
        let found = self.bitmap.insert_clear(range.first, range.last, cursor)?;
        self.cursor = found.wrapping_add(1);
        Some(self.addr(found))
    }

    /// Counts the addresses of `range` in use.
    #[must_use]
    pub fn count_in(&self, range: OrdRange) -> u128 {
        self.bitmap.count_ones(range.first, range.last)
    }

    /// Counts the free addresses of `range` (saturating at `u128::MAX` only for an empty IPv6 /0,
    /// which the pool rules never produce: its first address is reserved).
    #[must_use]
    pub fn free_in(&self, range: OrdRange) -> u128 {
        if range.first > range.last {
            return 0;
        }
        let used = self.count_in(range);
        if used == 0 {
            range.size()
        } else {
            (range.last - range.first) - (used - 1)
        }
    }

    /// Returns the heap memory held, in bytes.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.bitmap.heap_bytes()
    }

    /// Encodes the set and its cursor for a store: a version byte, the last ordinal (a check
    /// against the subnet it is decoded for), the cursor, then the bitmap's runs.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 10 * self.bitmap.n_runs());
        out.push(FORMAT_V1);
        put_varint(&mut out, self.bitmap.last());
        put_varint(&mut out, self.cursor);
        self.bitmap.encode(&mut out);
        out
    }

    /// Decodes what [`AddrSet::encode`] wrote for subnet `net`.
    ///
    /// # Errors
    /// `Error::Corrupt` for an unknown version, a size that does not match `net`, a cursor past
    /// the subnet, or any malformed run; never panics.
    pub fn decode(net: IpNet, bytes: &[u8]) -> Result<Self, Error> {
        let net = net.trunc();
        let mut r = Reader::new(bytes);
        if r.u8()? != FORMAT_V1 {
            return Err(corrupt("unknown encoding version"));
        }
        let last = r.varint()?;
        if last != host_mask(net) {
            return Err(corrupt("encoded size does not match the subnet"));
        }
        let cursor = r.varint()?;
        // One past the top wraps to 0, so any cursor up to `last` or 0 is what encode writes;
        // `last + 1` (cursor after allocating the last ordinal) is also legitimate.
        if cursor > last && cursor != last.wrapping_add(1) {
            return Err(corrupt("serial cursor lies outside the subnet"));
        }
        let bitmap = Bitmap::decode(last, &mut r)?;
        r.finish()?;
        Ok(Self {
            net,
            bitmap,
            cursor,
        })
    }

    /// Rebuilds a set from persisted parts (a store that keeps runs as rows).
    ///
    /// # Errors
    /// `Error::Corrupt` when the runs do not describe a bitmap of this subnet's size.
    pub fn from_parts(net: IpNet, bitmap: Bitmap, cursor: u128) -> Result<Self, Error> {
        let net = net.trunc();
        let last = host_mask(net);
        if bitmap.last() != last {
            return Err(corrupt("bitmap size does not match the subnet"));
        }
        if cursor > last && cursor != last.wrapping_add(1) {
            return Err(corrupt("serial cursor lies outside the subnet"));
        }
        Ok(Self {
            net,
            bitmap,
            cursor,
        })
    }
}

/// The address as an integer: IPv4 in the low 32 bits.
#[must_use]
pub fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The highest ordinal of `net`: its host part with every bit set.
#[must_use]
pub fn host_mask(net: IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    u128::MAX.checked_shr(128 - host_bits).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("valid prefix")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid address")
    }

    #[test]
    fn ordinals_are_offsets_inside_the_subnet_and_none_outside() {
        let cases = [
            ("10.1.2.0/24", "10.1.2.0", Some(0)),
            ("10.1.2.0/24", "10.1.2.255", Some(255)),
            ("10.1.2.0/24", "10.1.1.255", None),
            ("10.1.2.0/24", "10.1.3.0", None),
            ("10.1.2.0/24", "0.0.0.0", None),
            ("10.1.2.0/24", "255.255.255.255", None),
            ("10.1.2.0/24", "::ffff:10.1.2.3", None),
            ("0.0.0.0/0", "255.255.255.255", Some(u128::from(u32::MAX))),
            ("192.168.0.7/32", "192.168.0.7", Some(0)),
            ("192.168.0.7/32", "192.168.0.8", None),
            (
                "fd00::/64",
                "fd00::ffff:ffff:ffff:ffff",
                Some(u128::from(u64::MAX)),
            ),
            ("fd00::/64", "fd00:0:0:1::", None),
            ("fd00::/64", "fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("fd00::/64", "10.0.0.1", None),
            (
                "::/0",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                Some(u128::MAX),
            ),
            ("::/0", "::", Some(0)),
        ];
        for (prefix, addr, want) in cases {
            let set = AddrSet::new(net(prefix));
            assert_eq!(set.ordinal(ip(addr)), want, "{addr} in {prefix}");
            assert_eq!(
                set.contains(ip(addr)).is_some(),
                want.is_some(),
                "{addr} in {prefix}"
            );
            if let Some(o) = want {
                assert_eq!(set.addr(o), ip(addr), "{prefix} ordinal {o}");
            }
        }
    }

    #[test]
    fn edge_prefixes_have_the_right_size() {
        let cases = [
            ("0.0.0.0/0", (1u128 << 32) - 1),
            ("10.0.0.0/8", (1 << 24) - 1),
            ("10.0.0.0/30", 3),
            ("10.0.0.0/31", 1),
            ("10.0.0.1/32", 0),
            ("::/0", u128::MAX),
            ("fd00::/8", (1 << 120) - 1),
            ("fd00::/64", (1 << 64) - 1),
            ("fd00::/120", 255),
            ("fd00::/127", 1),
            ("fd00::1/128", 0),
        ];
        for (n, last) in cases {
            let s = AddrSet::new(net(n));
            assert_eq!(s.bitmap().last(), last, "{n}");
            let all = s.range(None);
            assert_eq!(s.free_in(all), last.saturating_add(1), "{n}");
            assert_eq!(s.addr(last), net(n).broadcast(), "{n}");
            assert_eq!(s.addr(0), net(n).network(), "{n}");
        }
    }

    #[test]
    fn addresses_outside_the_subnet_are_not_members() {
        let mut s = AddrSet::new(net("192.168.1.0/24"));
        assert_eq!(s.insert(ip("192.168.2.1")), None);
        assert_eq!(s.insert(ip("fd00::1")), None, "other family");
        assert_eq!(s.remove(ip("10.0.0.1")), None);
        assert_eq!(s.insert(ip("192.168.1.7")), Some(true));
        assert_eq!(s.insert(ip("192.168.1.7")), Some(false));
        assert_eq!(s.contains(ip("192.168.1.7")), Some(true));
    }

    #[test]
    fn serial_allocation_continues_after_the_last_one_and_wraps() {
        let mut s = AddrSet::new(net("10.0.0.0/29"));
        let r = s.range(None);
        let got: Vec<_> = (0..3).filter_map(|_| s.insert_any(r, true)).collect();
        assert_eq!(got, [ip("10.0.0.0"), ip("10.0.0.1"), ip("10.0.0.2")]);
        s.remove(ip("10.0.0.1"));
        assert_eq!(
            s.insert_any(r, true),
            Some(ip("10.0.0.3")),
            "serial skips the hole"
        );
        assert_eq!(
            s.insert_any(r, false),
            Some(ip("10.0.0.1")),
            "lowest fills it"
        );
        for want in ["10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"] {
            assert_eq!(s.insert_any(r, true), Some(ip(want)));
        }
        s.remove(ip("10.0.0.2"));
        assert_eq!(
            s.insert_any(r, true),
            Some(ip("10.0.0.2")),
            "wraps to the start"
        );
        assert_eq!(s.insert_any(r, true), None, "full");
    }

    #[test]
    fn the_cursor_survives_encoding() {
        let mut s = AddrSet::new(net("fd00::/64"));
        let r = s.range(None);
        for _ in 0..10 {
            s.insert_any(r, true);
        }
        s.remove(ip("fd00::3"));
        let back = AddrSet::decode(net("fd00::/64"), &s.encode()).expect("decodes");
        assert_eq!(back, s);
        let mut back = back;
        assert_eq!(
            back.insert_any(r, true),
            Some(ip("fd00::a")),
            "not the freed ::3"
        );
    }

    #[test]
    fn decoding_checks_the_subnet_and_the_version() {
        let s = AddrSet::new(net("10.0.0.0/24"));
        let bytes = s.encode();
        assert!(AddrSet::decode(net("10.0.0.0/25"), &bytes).is_err());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(AddrSet::decode(net("10.0.0.0/24"), &v2).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(AddrSet::decode(net("10.0.0.0/24"), &trailing).is_err());
        assert!(AddrSet::decode(net("10.0.0.0/24"), &[]).is_err());
    }
}
