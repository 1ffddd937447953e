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
use std::collections::HashMap;
use std::io::Read;

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

/// What sits on the pickle machine's stack.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Value(Id),
    Mark,
}

/// The pickle machine: reads opcodes from `input` and keeps its stack, memo and nodes.
struct Machine<'a, R: Read> {
    input: &'a mut R,
    limits: Limits,
    /// Bytes read so far.
    at: u64,
    /// Offset of the opcode being run (for errors).
    op_at: u64,
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    memo: HashMap<u32, Id>,
}

/// Reads one pickle from `input`, to its `STOP`, within `limits`; `input` is left just after
/// it (a legacy torch file holds several pickles in a row).
///
/// # Errors
/// [`PickleError`] for a pickle beyond the limits, an unsupported opcode or malformed input
/// (truncation included).
pub(crate) fn read_pickle<R: Read>(input: &mut R, limits: Limits) -> Result<Pickle, PickleError> {
    let mut m = Machine {
        input,
        limits,
        at: 0,
        op_at: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        m.op_at = m.at;
        let opcode = m.u8()?;
        if opcode == b'.' {
            let root = m.pop()?;
            let bytes = m.at;
            return Ok(Pickle {
                nodes: m.nodes,
                root,
                bytes,
            });
        }
        m.step(opcode)?;
    }
}

impl<R: Read> Machine<'_, R> {
    fn malformed<T>(&self, problem: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError::Malformed {
            at: self.op_at,
            problem: problem.into(),
        })
    }

    /// Reads `n` bytes, refusing before allocating when they would go past the size limit.
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, PickleError> {
        let end = self.at.saturating_add(n);
        if end > self.limits.max_bytes {
            return Err(PickleError::TooLarge {
                what: "its size limit",
                limit: self.limits.max_bytes,
            });
        }
        let mut buf = vec![0; n as usize];
        if let Err(e) = self.input.read_exact(&mut buf) {
            return self.malformed(format!("truncated ({e})"));
        }
        self.at = end;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let bytes = self.bytes(N as u64)?;
        let mut out = [0; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `\n`-terminated line (GLOBAL's module and name), within the size limit.
    fn line(&mut self) -> Result<String, PickleError> {
        let mut line = Vec::new();
        loop {
            match self.u8()? {
                b'\n' => break,
                c => line.push(c),
            }
        }
        match String::from_utf8(line) {
            Ok(s) => Ok(s),
            Err(_) => self.malformed("a name that is not UTF-8"),
        }
    }

    fn text(&mut self, n: u64) -> Result<String, PickleError> {
        let bytes = self.bytes(n)?;
        match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(_) => self.malformed("a string that is not UTF-8"),
        }
    }

    fn check_count(&self, n: usize) -> Result<(), PickleError> {
        if n >= self.limits.max_nodes {
            return Err(PickleError::TooLarge {
                what: "its value limit",
                limit: self.limits.max_nodes as u64,
            });
        }
        Ok(())
    }

    /// Makes a node and pushes it.
    fn push(&mut self, node: Node) -> Result<(), PickleError> {
        self.check_count(self.nodes.len())?;
        self.nodes.push(node);
        self.push_id(self.nodes.len() - 1)
    }

    fn push_id(&mut self, id: Id) -> Result<(), PickleError> {
        self.check_count(self.stack.len())?;
        self.stack.push(Slot::Value(id));
        Ok(())
    }

    fn push_mark(&mut self) -> Result<(), PickleError> {
        self.check_count(self.stack.len())?;
        self.stack.push(Slot::Mark);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        match self.stack.pop() {
            Some(Slot::Value(id)) => Ok(id),
            Some(Slot::Mark) => self.malformed("a mark where a value was expected"),
            None => self.malformed("stack underflow"),
        }
    }

    fn top(&self) -> Result<Id, PickleError> {
        match self.stack.last() {
            Some(Slot::Value(id)) => Ok(*id),
            _ => self.malformed("no value on the stack"),
        }
    }

    /// The values above the topmost mark, mark removed.
    fn pop_to_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let Some(mark) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            return self.malformed("no mark on the stack");
        };
        let ids = self.stack[mark + 1..]
            .iter()
            .map(|s| match s {
                Slot::Value(id) => *id,
                Slot::Mark => unreachable!("the topmost mark is at `mark`"),
            })
            .collect();
        self.stack.truncate(mark);
        Ok(ids)
    }

    fn pairs(&self, ids: Vec<Id>) -> Result<Vec<(Id, Id)>, PickleError> {
        if !ids.len().is_multiple_of(2) {
            return self.malformed("an odd number of dict items");
        }
        Ok(ids.chunks(2).map(|kv| (kv[0], kv[1])).collect())
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let id = self.top()?;
        if !self.memo.contains_key(&key) {
            self.check_count(self.memo.len())?;
        }
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(&id) => self.push_id(id),
            None => self.malformed(format!("memo entry {key} was never stored")),
        }
    }

    /// Runs one opcode (all but `STOP`).
    fn step(&mut self, opcode: u8) -> Result<(), PickleError> {
        match opcode {
            0x80 => self.u8().map(drop),  // PROTO
            0x95 => self.u64().map(drop), // FRAME (a length hint)
            b'(' => self.push_mark(),
            b'0' => self.pop().map(drop),                     // POP
            b'1' => self.pop_to_mark().map(drop),             // POP_MARK
            b'2' => self.top().and_then(|i| self.push_id(i)), // DUP
            b'q' => self.u8().and_then(|k| self.memo_put(u32::from(k))), // BINPUT
            b'r' => self.u32().and_then(|k| self.memo_put(k)), // LONG_BINPUT
            0x94 => self.memo_put(self.memo.len() as u32),    // MEMOIZE
            b'h' => self.u8().and_then(|k| self.memo_get(u32::from(k))), // BINGET
            b'j' => self.u32().and_then(|k| self.memo_get(k)), // LONG_BINGET
            _ => self.value(opcode),
        }
    }

    /// Opcodes that make a value.
    fn value(&mut self, opcode: u8) -> Result<(), PickleError> {
        let node = match opcode {
            b'N' => Node::None,
            0x88 => Node::Bool(true),
            0x89 => Node::Bool(false),
            b'J' => Node::Int(i64::from(i32::from_le_bytes(self.array()?))),
            b'K' => Node::Int(i64::from(self.u8()?)),
            b'M' => Node::Int(i64::from(u16::from_le_bytes(self.array()?))),
            0x8a => {
                let n = self.u8()?;
                self.long(u64::from(n))?
            }
            0x8b => {
                let n = self.u32()?;
                self.long(u64::from(n))?
            }
            b'G' => Node::Float(f64::from_be_bytes(self.array()?)),
            0x8c => {
                let n = self.u8()?;
                Node::Str(self.text(u64::from(n))?)
            }
            b'X' => {
                let n = self.u32()?;
                Node::Str(self.text(u64::from(n))?)
            }
            0x8d => {
                let n = self.u64()?;
                Node::Str(self.text(n)?)
            }
            b'U' => {
                let n = self.u8()?;
                Node::Str(String::from_utf8_lossy(&self.bytes(u64::from(n))?).into_owned())
            }
            b'T' => {
                let n = self.u32()?;
                Node::Str(String::from_utf8_lossy(&self.bytes(u64::from(n))?).into_owned())
            }
            b'C' => {
                let n = self.u8()?;
                Node::Bytes(self.bytes(u64::from(n))?.len())
            }
            b'B' => {
                let n = self.u32()?;
                Node::Bytes(self.bytes(u64::from(n))?.len())
            }
            0x8e | 0x96 => {
                let n = self.u64()?;
                Node::Bytes(self.bytes(n)?.len())
            }
            _ => return self.structure(opcode),
        };
        self.push(node)
    }

    /// LONG1 / LONG4: a little-endian two's-complement integer of `n` bytes.
    fn long(&mut self, n: u64) -> Result<Node, PickleError> {
        let bytes = self.bytes(n)?;
        if bytes.len() > 8 {
            let sign = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            if bytes[8..].iter().any(|&b| b != sign) {
                return Ok(Node::BigInt);
            }
        }
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut buf = [if negative { 0xff } else { 0 }; 8];
        let n = bytes.len().min(8);
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(Node::Int(i64::from_le_bytes(buf)))
    }

    /// Containers, globals and calls.
    fn structure(&mut self, opcode: u8) -> Result<(), PickleError> {
        let node = match opcode {
            b'}' => Node::Dict(Vec::new()),
            b']' => Node::List(Vec::new()),
            b')' => Node::Tuple(Vec::new()),
            0x8f => Node::Set(Vec::new()),
            b't' => Node::Tuple(self.pop_to_mark()?),
            b'l' => Node::List(self.pop_to_mark()?),
            b'd' => {
                let ids = self.pop_to_mark()?;
                Node::Dict(self.pairs(ids)?)
            }
            0x91 => Node::Set(self.pop_to_mark()?),
            0x85..=0x87 => {
                let n = usize::from(opcode - 0x84);
                let mut ids = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
                ids.reverse();
                Node::Tuple(ids)
            }
            b'c' => Node::Global(self.line()?, self.line()?),
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (self.nodes[module].clone(), self.nodes[name].clone()) {
                    (Node::Str(m), Node::Str(n)) => Node::Global(m, n),
                    _ => return self.malformed("STACK_GLOBAL of values that are not strings"),
                }
            }
            b'Q' => Node::PersId(self.pop()?),
            b'R' | 0x81 | 0x92 => {
                if opcode == 0x92 {
                    self.pop()?; // NEWOBJ_EX's keyword arguments
                }
                let args = self.pop()?;
                let callable = self.pop()?;
                Node::Object(Box::new(Object {
                    callable,
                    args,
                    ..Object::default()
                }))
            }
            _ => return self.mutation(opcode),
        };
        self.push(node)
    }

    /// Opcodes that change the value on the stack: items, appends, `BUILD`.
    fn mutation(&mut self, opcode: u8) -> Result<(), PickleError> {
        match opcode {
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.add_items(vec![key, value])
            }
            b'u' => {
                let ids = self.pop_to_mark()?;
                self.add_items(ids)
            }
            b'a' => {
                let value = self.pop()?;
                self.append(vec![value])
            }
            b'e' | 0x90 => {
                let ids = self.pop_to_mark()?;
                self.append(ids)
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?;
                match &mut self.nodes[target] {
                    Node::Object(object) => {
                        object.state = Some(state);
                        Ok(())
                    }
                    _ => self.malformed("BUILD of a value that is not an object"),
                }
            }
            _ => Err(PickleError::Unsupported {
                opcode,
                at: self.op_at,
            }),
        }
    }

    fn add_items(&mut self, ids: Vec<Id>) -> Result<(), PickleError> {
        let pairs = self.pairs(ids)?;
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::Dict(items) => items.extend(pairs),
            Node::Object(object) => object.items.extend(pairs),
            _ => return self.malformed("SETITEM(S) on a value that is not a dict"),
        }
        Ok(())
    }

    fn append(&mut self, ids: Vec<Id>) -> Result<(), PickleError> {
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::List(items) | Node::Set(items) => items.extend(ids),
            Node::Object(object) => object.appended.extend(ids),
            _ => return self.malformed("APPEND(S) on a value that is not a list"),
        }
        Ok(())
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
