//! A bounded reader of Python pickles, for the subset `torch.save` writes (protocols 2 to 5).
//!
//! Nothing is executed: `GLOBAL`s stay names, `REDUCE` / `NEWOBJ` / `BUILD` become nodes that
//! record the callable, its arguments and the state, and `BINPERSID` records its id. What they
//! mean (a tensor, an `OrderedDict`, a module) is decided by the caller, who reads only the
//! names it knows (see `pth.rs`).
//!
//! Every resource is bounded before it is spent: the pickle's size ([`Limits::max_bytes`];
//! strings and bytes are checked against what is left of it before they are allocated), the
//! number of nodes, of memo entries and of stack entries. Memory is at most a few bytes per
//! byte of pickle, time is linear in it, and a crafted pickle ends in a [`PickleError`].
mod machine;

pub(crate) use machine::read_pickle;

/// Index of a node in [`Pickle::nodes`].
pub(crate) type Id = usize;

/// The limits a pickle is read within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bytes of pickle read at most (to its `STOP`).
    pub max_bytes: u64,
    /// Nodes (values) made at most; memo entries and stack entries are bounded by the same
    /// number.
    pub max_nodes: usize,
}

impl Limits {
    /// 16 MiB of pickle, 2 million values: a `state_dict` of ResNeXt-101 64x4d is about
    /// 60 KB and 20,000 values, a whole pickled model (`torch.save(model)`) a few times that.
    pub const DEFAULT: Limits = Limits {
        max_bytes: 16 << 20,
        max_nodes: 2_000_000,
    };
}

/// A value of the pickle.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in an `i64`.
    Int(i64),
    /// An integer that does not.
    BigInt,
    /// A float.
    Float(f64),
    /// A text string (`str`, or a protocol-1 byte string read as text).
    Str(String),
    /// A `bytes` or `bytearray` of this many bytes (the content is not kept).
    Bytes(usize),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict, in insertion order.
    Dict(Vec<(Id, Id)>),
    /// A set or frozenset.
    Set(Vec<Id>),
    /// A global name (`module.name`), not looked up.
    Global(String, String),
    /// `BINPERSID`: the persistent id (torch: a storage's description).
    PersId(Id),
    /// The object a `REDUCE` / `NEWOBJ` would make.
    Object(Box<Object>),
}

/// What `callable(*args)` would make, and what was later done to it.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Object {
    /// The callable (usually a [`Node::Global`]).
    pub callable: Id,
    /// Its arguments (usually a [`Node::Tuple`]).
    pub args: Id,
    /// The state given by `BUILD`, if any.
    pub state: Option<Id>,
    /// Items set by `SETITEM(S)` (an `OrderedDict`).
    pub items: Vec<(Id, Id)>,
    /// Items added by `APPEND(S)` (a list subclass).
    pub appended: Vec<Id>,
}

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum PickleError {
    /// It is larger than [`Limits::max_bytes`] or holds more values than
    /// [`Limits::max_nodes`].
    #[error("the pickle exceeds {what} ({limit}); a torch.save of a model stays far below")]
    TooLarge {
        /// What was exceeded.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// An opcode this reader does not implement.
    #[error("pickle opcode 0x{opcode:02x} at byte {at} is not supported")]
    Unsupported {
        /// The opcode.
        opcode: u8,
        /// Its offset.
        at: u64,
    },
    /// The pickle is malformed (truncated, stack underflow, bad memo reference, …).
    #[error("malformed pickle at byte {at}: {problem}")]
    Malformed {
        /// Offset of the opcode.
        at: u64,
        /// What is wrong.
        problem: String,
    },
}

/// A pickle read to its `STOP`.
#[derive(Debug)]
pub(crate) struct Pickle {
    /// Every value made, referred to by [`Id`].
    pub nodes: Vec<Node>,
    /// The value the pickle returns.
    pub root: Id,
    /// Bytes read, `STOP` included.
    pub bytes: u64,
}

impl Pickle {
    /// The node `id`.
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id]
    }

    /// The text of a [`Node::Str`].
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.node(id) {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of a [`Node::Int`] (or a bool, as Python treats it).
    pub fn int(&self, id: Id) -> Option<i64> {
        match self.node(id) {
            Node::Int(v) => Some(*v),
            Node::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The elements of a [`Node::Tuple`] or [`Node::List`].
    pub fn seq(&self, id: Id) -> Option<&[Id]> {
        match self.node(id) {
            Node::Tuple(v) | Node::List(v) => Some(v),
            _ => None,
        }
    }

    /// `(module, name)` of a [`Node::Global`].
    pub fn global(&self, id: Id) -> Option<(&str, &str)> {
        match self.node(id) {
            Node::Global(m, n) => Some((m, n)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Pickle, PickleError> {
        read_pickle(&mut &bytes[..], Limits::DEFAULT)
    }

    #[test]
    fn a_dict_of_an_ordered_dict_reads_with_its_items() {
        // pickle.dumps({"a": collections.OrderedDict([("x", 1)]), "b": [2.5, None]}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01ccollections\nOrderedDict\nq\x02)Rq\x03X\x01\x00\x00\x00xq\x04K\x01sX\x01\x00\x00\x00bq\x05]q\x06(G@\x04\x00\x00\x00\x00\x00\x00Neu.";
        let p = read(bytes).unwrap();
        let Node::Dict(items) = p.node(p.root) else {
            panic!("{:?}", p.node(p.root))
        };
        assert_eq!(p.str(items[0].0), Some("a"));
        let Node::Object(od) = p.node(items[0].1) else {
            panic!()
        };
        assert_eq!(p.global(od.callable), Some(("collections", "OrderedDict")));
        assert_eq!(p.str(od.items[0].0), Some("x"));
        assert_eq!(p.int(od.items[0].1), Some(1));
        assert_eq!(
            p.seq(items[1].1)
                .map(|s| s.iter().map(|&i| p.node(i).clone()).collect()),
            Some(vec![Node::Float(2.5), Node::None])
        );
        assert_eq!(p.bytes, bytes.len() as u64);
    }

    #[test]
    fn long_integers_read_with_their_sign() {
        // LONG1 of 0x1950a86a20f9469cfc6c (torch's legacy magic number) is too big for i64.
        let big = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        assert_eq!(read(big).map(|p| p.node(p.root).clone()), Ok(Node::BigInt));
        assert_eq!(
            read(b"\x8a\x02\x18\xfc.").map(|p| p.int(p.root)),
            Ok(Some(-1000))
        );
        assert_eq!(read(b"\x8a\x00.").map(|p| p.int(p.root)), Ok(Some(0)));
    }

    #[test]
    fn sizes_are_checked_before_allocating() {
        // BINUNICODE8 of 2^60 bytes in a 12-byte pickle.
        let err = read(b"\x8d\x00\x00\x00\x00\x00\x00\x00\x10.").unwrap_err();
        assert!(matches!(err, PickleError::TooLarge { .. }), "{err}");
        // A short string whose bytes are missing.
        let err = read(b"X\x10\x00\x00\x00ab").unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let limits = Limits {
            max_bytes: 1 << 20,
            max_nodes: 1000,
        };
        let many: Vec<u8> = std::iter::repeat_n(b'N', 5000).chain([b'.']).collect();
        let err = read_pickle(&mut &many[..], limits).unwrap_err();
        assert!(matches!(err, PickleError::TooLarge { .. }), "{err}");
        let err = read_pickle(
            &mut &many[..],
            Limits {
                max_bytes: 100,
                ..limits
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("size limit"), "{err}");
    }

    #[test]
    fn malformed_pickles_are_errors() {
        for bad in [
            &b"."[..],       // STOP on an empty stack
            b"h\x05.",       // memo entry never stored
            b"Nu.",          // SETITEMS without a mark
            b"(Nb.",         // BUILD on a mark
            b"K\x01K\x02s.", // SETITEM on an int
            b"\xff.",        // not an opcode
            b"cos\nsystem",  // truncated GLOBAL
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
        let err = read(b"\x97.").unwrap_err();
        assert!(
            matches!(err, PickleError::Unsupported { opcode: 0x97, .. }),
            "{err}"
        );
    }
}
