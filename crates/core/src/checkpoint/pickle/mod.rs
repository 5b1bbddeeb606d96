//! A small, non-executing Python pickle reader: enough of the pickle machine to walk the object
//! graph that `torch.save` writes, whatever else the file carries (mmseg/mmengine `meta` with
//! `ConfigDict`s, numpy arrays, sets, bytes, user classes).
//!
//! Nothing is ever imported or called: `GLOBAL` pushes a name, `REDUCE` / `NEWOBJ` / `INST` /
//! `OBJ` build an inert [`Obj`](value::Obj) record (callable + arguments + later `BUILD` state and
//! `SETITEMS` / `APPENDS` items), and `BINPERSID` records the persistent id. Containers are
//! reference-counted so that memo references see later mutation, as in Python.
//!
//! All opcodes of protocols 0 to 5 are handled except the extension registry (`EXT1/2/4`) and
//! out-of-band buffers (`NEXT_BUFFER`, `READONLY_BUFFER`), which `torch.save` never writes.
//! Malformed input yields an error string, never a panic.
//!
//! [`Machine::run`] reads one opcode at a time and hands it to the handler of its family
//! (`opcodes.rs`): stack control, numbers, text and bytes, containers, the memo, and globals
//! and object construction.

mod opcodes;
mod value;

use std::collections::HashMap;

pub(crate) use value::Value;

/// A pickle program, run over a byte slice.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Positions in `stack` of the pending MARKs.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Set when the program ran past the end of `data` (a longer prefix may parse).
    eof: bool,
    /// Every persistent id seen, in order (for torch: every storage reference).
    pids: Vec<Value>,
}

type R<T> = std::result::Result<T, String>;

/// Runs the pickle in `data` and returns the object it builds.
pub(crate) fn load(data: &[u8]) -> R<Value> {
    load_prefix(data).map(|l| l.value).map_err(|e| e.message)
}

/// Why a pickle could not be read.
#[derive(Debug)]
pub(crate) struct PickleError {
    /// What is wrong, for the user.
    pub message: String,
    /// The program ran past the end of the data: it may be complete in a longer prefix.
    pub eof: bool,
}

/// A pickle read by [`load_prefix`].
pub(crate) struct Loaded {
    /// The object it builds.
    pub value: Value,
    /// The bytes it took, STOP included.
    pub len: usize,
    /// Every persistent id it holds, in order.
    pub pids: Vec<Value>,
}

/// Runs the pickle at the start of `data` (which may go on after its STOP).
pub(crate) fn load_prefix(data: &[u8]) -> std::result::Result<Loaded, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::with_capacity(64),
        marks: Vec::new(),
        memo: HashMap::new(),
        eof: false,
        pids: Vec::new(),
    };
    match m.run() {
        Ok(value) => Ok(Loaded {
            value,
            len: m.pos,
            pids: std::mem::take(&mut m.pids),
        }),
        Err(message) => Err(PickleError {
            message,
            eof: m.eof,
        }),
    }
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> R<&[u8]> {
        let Some(end) = self.pos.checked_add(n).filter(|&e| e <= self.data.len()) else {
            self.eof = true;
            return Err(format!(
                "pickle ends early (wanted {n} bytes at offset {})",
                self.pos
            ));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len_u32(&mut self) -> R<usize> {
        Ok(u32::from_le_bytes(self.le::<4>()?) as usize)
    }

    fn len_u64(&mut self) -> R<usize> {
        usize::try_from(u64::from_le_bytes(self.le::<8>()?)).map_err(|_| "length overflow".into())
    }

    /// A text line (protocol 0), without the newline.
    fn line(&mut self) -> R<&str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            self.eof = true;
            return Err("pickle ends inside a text line".into());
        };
        self.pos += n + 1;
        let line = &rest[..n];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        std::str::from_utf8(line).map_err(|_| "non-UTF-8 text in pickle".to_string())
    }

    fn pop(&mut self) -> R<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pickle pops past a MARK".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn top(&mut self) -> R<&mut Value> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self.marks.pop().ok_or("pickle has no MARK to pop to")?;
        if m > self.stack.len() {
            return Err("corrupt pickle MARK".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v)
    }

    fn memo_get(&self, k: u64) -> R<Value> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| format!("pickle refers to memo entry {k}, which was never stored"))
    }

    fn memo_put(&mut self, k: u64) -> R<()> {
        let v = self.stack.last().cloned().ok_or("pickle stack underflow")?;
        self.memo.insert(k, v);
        Ok(())
    }

    /// Runs the program to its STOP and returns the value on top of the stack.
    fn run(&mut self) -> R<Value> {
        loop {
            let op = self.u8()?;
            if op == b'.' {
                // STOP
                return self.stack.pop().ok_or_else(|| "empty pickle".into());
            }
            let literal = match self.number(op)? {
                Some(v) => Some(v),
                None => self.text(op)?,
            };
            if let Some(v) = literal {
                self.push(v);
                continue;
            }
            let known =
                self.control(op)? || self.container(op)? || self.memo_op(op)? || self.object(op)?;
            if !known {
                return Err(unsupported(op, self.pos - 1));
            }
        }
    }
}

/// The error for an opcode that no handler knows, read at offset `at`.
fn unsupported(op: u8, at: usize) -> String {
    match op {
        0x82..=0x84 => "pickle uses the copyreg extension registry (EXT opcodes), which is not \
                        supported"
            .into(),
        0x97 | 0x98 => {
            "pickle uses out-of-band buffers (protocol 5), which are not supported".into()
        }
        other => format!("unknown pickle opcode 0x{other:02x} at offset {at}"),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_are_sign_extended() {
        assert!(matches!(Machine::long_bytes(&[0xff]), Value::Int(-1)));
        assert!(matches!(
            Machine::long_bytes(&[0x00, 0x01]),
            Value::Int(256)
        ));
        assert!(matches!(Machine::long_bytes(&[0; 10]), Value::BigInt));
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &b""[..],
            b"\x80",
            b"\x80\x02}q",
            b"\x80\x02(u.",
            b"\x80\x02h\x05.",
            b"\xff",
        ] {
            assert!(load(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dict_subclass_items() {
        // `ConfigDict(a=1)` at protocol 2: GLOBAL, EMPTY_TUPLE, NEWOBJ, MARK, 'a', 1, SETITEMS.
        let p = b"\x80\x02c__main__\nConfigDict\n)\x81(X\x01\x00\x00\x00aK\x01u.";
        let v = load(p).unwrap();
        let items = v.dict_items().unwrap();
        assert_eq!(items[0].0.as_str(), Some("a"));
    }
}
