//! The pickle machine: runs a pickle's opcodes, with its stack, memo and nodes, within the
//! [`Limits`], and returns the [`Pickle`] it built.
use std::collections::HashMap;
use std::io::Read;

use super::{Id, Limits, Node, Object, Pickle, PickleError};

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
