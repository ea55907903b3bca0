//! The DNS answers init gives inside a sandbox: every well-formed name gets
//! a synthetic loopback address for `A`, every other type gets no data, and
//! nothing is ever forwarded (see `net.rs` in init). Pure: bytes in, bytes
//! out, so the parser is tested here, once.

/// Response codes used.
const NOERROR: u16 = 0;
const FORMERR: u16 = 1;
const NOTIMP: u16 = 4;
const REFUSED: u16 = 5;
/// Record types and class.
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;
/// How long a resolver may keep an answer: a name's address never changes
/// while the sandbox lives.
const TTL: u32 = 300;

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// The name of a question starting at `at` (lower-case, dots between
/// labels, no trailing dot) and where the question's type field starts.
/// `None` for anything but a hostname of plain labels: a compression
/// pointer, an empty or over-long label, a name over 255 bytes, or a byte
/// other than a letter, digit, `-` or `_`.
fn parse_name(p: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let len = usize::from(*p.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = p.get(at..at + len)?;
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        at += len;
        // The wire form (length bytes included, and the final zero) is at
        // most 255 bytes.
        if name.len() + 2 > 255 {
            return None;
        }
    }
    Some((name, at))
}

/// A reply: the query's id and recursion-desired bit, the question when
/// there is one, and at most one `A` record.
fn reply(q: &[u8], opcode: u16, rcode: u16, question: &[u8], a: Option<[u8; 4]>) -> Vec<u8> {
    let rd = u16_at(q, 2).unwrap_or(0) & 0x0100;
    // QR, the opcode, AA, RD as asked, RA (so resolvers do not warn), rcode.
    let flags = 0x8000 | (opcode << 11) | 0x0400 | rd | 0x0080 | rcode;
    let mut r = Vec::with_capacity(12 + question.len() + 16);
    r.extend_from_slice(&q[..2]);
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&u16::from(!question.is_empty()).to_be_bytes());
    r.extend_from_slice(&u16::from(a.is_some()).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    if let Some(addr) = a {
        r.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question's
        r.extend_from_slice(&TYPE_A.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&TTL.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&addr);
    }
    r
}

/// Answers one query packet. `lookup` gives the synthetic address of a
/// name (`None`: none is left, answered `REFUSED`); it is called only for
/// an `A` question about a well-formed name other than `localhost`.
/// Returns `None` for a packet that gets no answer at all (shorter than a
/// header, or itself a response).
pub fn answer(q: &[u8], lookup: impl FnOnce(&str) -> Option<[u8; 4]>) -> Option<Vec<u8>> {
    let flags = u16_at(q, 2)?;
    if q.len() < 12 || flags & 0x8000 != 0 {
        return None;
    }
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Some(reply(q, opcode, NOTIMP, &[], None));
    }
    if u16_at(q, 4) != Some(1) {
        return Some(reply(q, 0, FORMERR, &[], None));
    }
    let Some((name, at)) = parse_name(q, 12) else {
        return Some(reply(q, 0, FORMERR, &[], None));
    };
    let (Some(qtype), Some(qclass)) = (u16_at(q, at), u16_at(q, at + 2)) else {
        return Some(reply(q, 0, FORMERR, &[], None));
    };
    let question = &q[12..at + 4];
    if qtype != TYPE_A || !(qclass == CLASS_IN || qclass == CLASS_ANY) || name.is_empty() {
        return Some(reply(q, 0, NOERROR, question, None));
    }
    if name == "localhost" || name.ends_with(".localhost") {
        return Some(reply(q, 0, NOERROR, question, Some([127, 0, 0, 1])));
    }
    Some(match lookup(&name) {
        Some(a) => reply(q, 0, NOERROR, question, Some(a)),
        None => reply(q, 0, REFUSED, question, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn rcode(r: &[u8]) -> u16 {
        u16_at(r, 2).unwrap() & 0xf
    }

    fn answers(r: &[u8]) -> u16 {
        u16_at(r, 6).unwrap()
    }

    #[test]
    fn an_a_query_gets_the_names_address_and_nothing_else_is_looked_up() {
        let mut asked = Vec::new();
        let r = answer(&query("Pypi.Example.test.", TYPE_A), |n| {
            asked.push(n.to_owned());
            Some([127, 100, 0, 7])
        })
        .unwrap();
        assert_eq!(asked, ["pypi.example.test"]);
        assert_eq!((rcode(&r), answers(&r)), (NOERROR, 1));
        assert_eq!(&r[..2], &[0xab, 0xcd], "the query's id");
        assert_eq!(&r[r.len() - 4..], &[127, 100, 0, 7]);
        assert_eq!(
            u16_at(&r, 2).unwrap() & 0x8100,
            0x8100,
            "a response, RD echoed"
        );
    }

    #[test]
    fn other_types_get_no_data_and_are_never_looked_up() {
        for qtype in [
            28, /* AAAA */
            16, /* TXT */
            15, /* MX */
            33, /* SRV */
            255,
        ] {
            let r = answer(&query("a.test", qtype), |_| panic!("looked up")).unwrap();
            assert_eq!((rcode(&r), answers(&r)), (NOERROR, 0), "type {qtype}");
        }
    }

    #[test]
    fn malformed_names_get_a_format_error_and_are_never_looked_up() {
        let long_label = "a".repeat(64);
        let long_name = ["abcdefghij"; 24].join(".");
        for name in [
            long_label.as_str(),
            long_name.as_str(),
            "a b.test",
            "a\u{e9}.test",
        ] {
            let r = answer(&query(name, TYPE_A), |_| panic!("looked up {name}")).unwrap();
            assert_eq!(rcode(&r), FORMERR, "{name:?}");
        }
        // A compression pointer in a question.
        let mut q = query("a.test", TYPE_A);
        q[12] = 0xc0;
        assert_eq!(rcode(&answer(&q, |_| panic!()).unwrap()), FORMERR);
        // Two questions, a truncated question, a response, a stub.
        let mut two = query("a.test", TYPE_A);
        two[5] = 2;
        assert_eq!(rcode(&answer(&two, |_| panic!()).unwrap()), FORMERR);
        let q = query("a.test", TYPE_A);
        assert_eq!(
            rcode(&answer(&q[..q.len() - 1], |_| panic!()).unwrap()),
            FORMERR
        );
        let mut resp = query("a.test", TYPE_A);
        resp[2] |= 0x80;
        assert_eq!(answer(&resp, |_| panic!()), None);
        assert_eq!(answer(&q[..5], |_| panic!()), None);
        // Not a query: another opcode.
        let mut notify = query("a.test", TYPE_A);
        notify[2] = 0x20;
        assert_eq!(rcode(&answer(&notify, |_| panic!()).unwrap()), NOTIMP);
    }

    #[test]
    fn a_full_table_is_refused_and_localhost_is_loopback() {
        let r = answer(&query("x.test", TYPE_A), |_| None).unwrap();
        assert_eq!((rcode(&r), answers(&r)), (REFUSED, 0));
        let r = answer(&query("localhost", TYPE_A), |_| panic!()).unwrap();
        assert_eq!(&r[r.len() - 4..], &[127, 0, 0, 1]);
        // The longest legal name is fine.
        let name = [&"a".repeat(63)[..]; 4].join(".");
        assert_eq!(name.len(), 255);
        let r = answer(&query(&name[..253], TYPE_A), |_| Some([127, 100, 0, 1])).unwrap();
        assert_eq!(rcode(&r), NOERROR);
    }
}
