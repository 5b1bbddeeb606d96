//! The opcode handlers of the [`Machine`], one per family. Each handles the opcodes of its
//! family and declines any other (`Ok(None)` / `Ok(false)`), so that [`Machine::run`] can try
//! them in turn; the families share no opcode.

use std::cell::RefCell;
use std::rc::Rc;

use super::{Machine, Value, R};

impl Machine<'_> {
    fn set_items(&mut self, kv: Vec<Value>) -> R<()> {
        if !kv.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        let mut pairs = Vec::with_capacity(kv.len() / 2);
        let mut it = kv.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        match self.top()? {
            Value::Dict(d) => d.borrow_mut().extend(pairs),
            Value::Object(o) => o.borrow_mut().items.extend(pairs),
            other => return Err(format!("SETITEMS on a {}", other.describe())),
        }
        Ok(())
    }

    fn append(&mut self, vs: Vec<Value>) -> R<()> {
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(vs),
            Value::Set(l) => l.borrow_mut().extend(vs),
            Value::Object(o) => o.borrow_mut().list.extend(vs),
            other => return Err(format!("APPENDS on a {}", other.describe())),
        }
        Ok(())
    }

    /// REDUCE: a few builtins become plain containers, anything else an inert object.
    fn reduce(&mut self, callable: Value, args: Value) -> Value {
        if let Some((m, n)) = callable.global() {
            match (m, n) {
                ("collections", "OrderedDict") | ("collections", "defaultdict") => {
                    return Value::new_dict(Vec::new())
                }
                ("builtins" | "__builtin__", "set" | "frozenset") => {
                    // Sets are never read: their items are not copied (a copy per REDUCE of
                    // one memoised list would make memory quadratic in the pickle's size).
                    return Value::Set(Rc::new(RefCell::new(Vec::new())));
                }
                _ => {}
            }
        }
        Value::object(callable, args)
    }

    fn build(&mut self) -> R<()> {
        let state = self.pop()?;
        // The state of anything but an object (e.g. torch's `_metadata` on a state dict's
        // OrderedDict) is not needed.
        if let Value::Object(o) = self.top()? {
            o.borrow_mut().state = Some(state);
        }
        Ok(())
    }

    fn int_text(s: &str) -> Value {
        let s = s.trim_end_matches('L');
        match s {
            "00" | "01" => Value::Bool,
            _ => s.parse::<i64>().map(Value::Int).unwrap_or(Value::BigInt),
        }
    }

    pub(super) fn long_bytes(b: &[u8]) -> Value {
        if b.is_empty() {
            return Value::Int(0);
        }
        if b.len() > 8 {
            return Value::BigInt;
        }
        // Two's complement, little endian, sign-extended.
        let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut a = [fill; 8];
        a[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(a))
    }

    fn str_value(b: &[u8]) -> R<Value> {
        std::str::from_utf8(b)
            .map(|s| Value::Str(s.into()))
            .map_err(|_| "invalid UTF-8 string in pickle".into())
    }

    /// PROTO, FRAME, MARK and the stack manipulation opcodes.
    pub(super) fn control(&mut self, op: u8) -> R<bool> {
        match op {
            0x80 => {
                // PROTO
                let p = self.u8()?;
                if p > 5 {
                    return Err(format!("unknown pickle protocol {p}"));
                }
            }
            0x95 => {
                self.le::<8>()?; // FRAME: a size hint only
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                // POP: may pop a MARK itself
                if self.marks.last() == Some(&self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            b'1' => {
                // POP_MARK
                self.pop_mark()?;
            }
            b'2' => {
                // DUP
                let v = self.top()?.clone();
                self.push(v)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The value of a None, bool, int or float opcode.
    pub(super) fn number(&mut self, op: u8) -> R<Option<Value>> {
        Ok(Some(match op {
            b'N' => Value::None,
            0x88 | 0x89 => Value::Bool,
            b'J' => Value::Int(i32::from_le_bytes(self.le::<4>()?) as i64),
            b'K' => Value::Int(self.u8()? as i64),
            b'M' => Value::Int(u16::from_le_bytes(self.le::<2>()?) as i64),
            0x8a => {
                // LONG1
                let n = self.u8()? as usize;
                Self::long_bytes(self.take(n)?)
            }
            0x8b => {
                // LONG4
                let n = self.len_u32()?;
                Self::long_bytes(self.take(n)?)
            }
            b'I' | b'L' => Self::int_text(self.line()?),
            b'G' => {
                self.le::<8>()?;
                Value::Float
            }
            b'F' => {
                self.line()?;
                Value::Float
            }
            _ => return Ok(None),
        }))
    }

    /// The value of a string or bytes opcode.
    pub(super) fn text(&mut self, op: u8) -> R<Option<Value>> {
        Ok(Some(match op {
            b'X' => {
                // BINUNICODE
                let n = self.len_u32()?;
                Self::str_value(self.take(n)?)?
            }
            0x8c => {
                // SHORT_BINUNICODE
                let n = self.u8()? as usize;
                Self::str_value(self.take(n)?)?
            }
            0x8d => {
                // BINUNICODE8
                let n = self.len_u64()?;
                Self::str_value(self.take(n)?)?
            }
            // UNICODE: raw-unicode-escape text; only ASCII names matter to us
            b'V' => Value::Str(self.line()?.into()),
            b'S' => {
                // STRING
                let l = self.line()?;
                Value::Str(l.trim_matches(|c| c == '\'' || c == '"').into())
            }
            b'T' | b'B' => {
                // BINSTRING (Python 2 str) / BINBYTES
                let n = self.len_u32()?;
                let b = self.take(n)?;
                if op == b'T' {
                    Value::Str(String::from_utf8_lossy(b).into())
                } else {
                    Value::Bytes
                }
            }
            b'U' | b'C' => {
                // SHORT_BINSTRING / SHORT_BINBYTES
                let n = self.u8()? as usize;
                let b = self.take(n)?;
                if op == b'U' {
                    Value::Str(String::from_utf8_lossy(b).into())
                } else {
                    Value::Bytes
                }
            }
            0x8e | 0x96 => {
                // BINBYTES8 / BYTEARRAY8
                let n = self.len_u64()?;
                self.take(n)?;
                Value::Bytes
            }
            _ => return Ok(None),
        }))
    }

    /// The tuple, list, dict and set opcodes: building containers and adding to them.
    pub(super) fn container(&mut self, op: u8) -> R<bool> {
        match op {
            b')' => self.push(Value::Tuple(Rc::from(Vec::new()))),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items.into()))
            }
            0x85..=0x87 => {
                // TUPLE1, TUPLE2, TUPLE3
                let n = (op - 0x84) as usize;
                if self.stack.len() < n
                    || self.marks.last().is_some_and(|&m| m > self.stack.len() - n)
                {
                    return Err("TUPLE with too few values".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(items.into()))
            }
            b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(Rc::new(RefCell::new(items))))
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])?
            }
            b'e' | 0x90 => {
                // APPENDS / ADDITEMS
                let items = self.pop_mark()?;
                self.append(items)?
            }
            b'}' => self.push(Value::new_dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark()?;
                self.push(Value::new_dict(Vec::new()));
                self.set_items(items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?
            }
            0x8f => self.push(Value::Set(Rc::new(RefCell::new(Vec::new())))),
            0x91 => {
                // FROZENSET
                let items = self.pop_mark()?;
                self.push(Value::Set(Rc::new(RefCell::new(items))))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The memo opcodes: PUT and MEMOIZE store the top of the stack, GET pushes an entry.
    pub(super) fn memo_op(&mut self, op: u8) -> R<bool> {
        match op {
            b'q' => {
                let k = self.u8()? as u64;
                self.memo_put(k)?
            }
            b'r' => {
                let k = u32::from_le_bytes(self.le::<4>()?) as u64;
                self.memo_put(k)?
            }
            b'p' => {
                let k = self
                    .line()?
                    .parse::<u64>()
                    .map_err(|_| "bad PUT index in pickle")?;
                self.memo_put(k)?
            }
            0x94 => {
                let k = self.memo.len() as u64;
                self.memo_put(k)?
            }
            b'h' => {
                let k = self.u8()? as u64;
                let v = self.memo_get(k)?;
                self.push(v)
            }
            b'j' => {
                let k = u32::from_le_bytes(self.le::<4>()?) as u64;
                let v = self.memo_get(k)?;
                self.push(v)
            }
            b'g' => {
                let k = self
                    .line()?
                    .parse::<u64>()
                    .map_err(|_| "bad GET index in pickle")?;
                let v = self.memo_get(k)?;
                self.push(v)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Globals, object construction (never executed: see [`Value::Object`]), BUILD and
    /// persistent ids.
    pub(super) fn object(&mut self, op: u8) -> R<bool> {
        match op {
            b'c' => {
                // GLOBAL
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                self.push(Value::Global(Rc::new((module, name))))
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop()?;
                let module = self.pop()?;
                match (module.as_str(), name.as_str()) {
                    (Some(m), Some(n)) => {
                        self.push(Value::Global(Rc::new((m.to_string(), n.to_string()))))
                    }
                    _ => return Err("STACK_GLOBAL without two strings".into()),
                }
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.reduce(callable, args);
                self.push(v)
            }
            0x81 => {
                // NEWOBJ
                let args = self.pop()?;
                let cls = self.pop()?;
                self.push(Value::object(cls, args))
            }
            0x92 => {
                // NEWOBJ_EX
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                self.push(Value::object(cls, args))
            }
            b'i' => {
                // INST
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                let args = self.pop_mark()?;
                let cls = Value::Global(Rc::new((module, name)));
                self.push(Value::object(cls, Value::Tuple(args.into())))
            }
            b'o' => {
                // OBJ
                let mut items = self.pop_mark()?;
                if items.is_empty() {
                    return Err("OBJ without a class".into());
                }
                let cls = items.remove(0);
                self.push(Value::object(cls, Value::Tuple(items.into())))
            }
            b'b' => self.build()?,
            b'Q' => {
                // BINPERSID
                let id = self.pop()?;
                self.pids.push(id.clone());
                self.push(Value::PersId(Rc::new(id)))
            }
            b'P' => {
                // PERSID
                let id = Value::Str(self.line()?.into());
                self.pids.push(id.clone());
                self.push(Value::PersId(Rc::new(id)))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}
