//! A small, non-executing Python pickle reader: enough of the pickle machine to walk the object
//! graph that `torch.save` writes, whatever else the file carries (mmseg/mmengine `meta` with
//! `ConfigDict`s, numpy arrays, sets, bytes, user classes).
//!
//! Nothing is ever imported or called: `GLOBAL` pushes a name, `REDUCE` / `NEWOBJ` / `INST` /
//! `OBJ` build an inert [`Obj`] record (callable + arguments + later `BUILD` state and
//! `SETITEMS` / `APPENDS` items), and `BINPERSID` records the persistent id. Containers are
//! reference-counted so that memo references see later mutation, as in Python.
//!
//! All opcodes of protocols 0 to 5 are handled except the extension registry (`EXT1/2/4`) and
//! out-of-band buffers (`NEXT_BUFFER`, `READONLY_BUFFER`), which `torch.save` never writes.
//! Malformed input yields an error string, never a panic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A value on the pickle stack.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool,
    Int(i64),
    /// An integer that does not fit in an i64 (its value is never needed).
    BigInt,
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<[Value]>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Set(Rc<RefCell<Vec<Value>>>),
    /// `module.name`, from GLOBAL / STACK_GLOBAL.
    Global(Rc<(String, String)>),
    /// The result of calling something (REDUCE, NEWOBJ, INST, OBJ).
    Object(Rc<RefCell<Obj>>),
    /// A persistent id (`BINPERSID`): for torch, a storage reference.
    PersId(Rc<Value>),
}

/// An object the pickle would construct by a call; never actually constructed.
#[derive(Debug)]
pub(crate) struct Obj {
    /// What would be called (usually a [`Value::Global`]).
    pub callable: Value,
    /// The positional arguments (usually a tuple).
    pub args: Value,
    /// The `BUILD` state, if any.
    pub state: Option<Value>,
    /// Items added with SETITEM(S): the object is a dict subclass.
    pub items: Vec<(Value, Value)>,
    /// Items added with APPEND(S) / ADDITEMS: the object is a list or set subclass.
    pub list: Vec<Value>,
}

impl Value {
    fn new_dict(items: Vec<(Value, Value)>) -> Value {
        Value::Dict(Rc::new(RefCell::new(items)))
    }

    fn object(callable: Value, args: Value) -> Value {
        Value::Object(Rc::new(RefCell::new(Obj {
            callable,
            args,
            state: None,
            items: Vec::new(),
            list: Vec::new(),
        })))
    }

    /// `module.name` when this is a global.
    pub fn global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global(g) => Some((g.0.as_str(), g.1.as_str())),
            _ => None,
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer that fits in usize.
    pub fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    /// The items of a dict or of a dict subclass instance (`OrderedDict`, `ConfigDict`, ...).
    pub fn dict_items(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            Value::Object(o) => {
                let o = o.borrow();
                if o.items.is_empty() {
                    // A dict subclass instance without items, e.g. `OrderedDict()` rebuilt by
                    // `REDUCE` and then filled (handled as Dict), or an arbitrary object.
                    None
                } else {
                    Some(o.items.clone())
                }
            }
            _ => None,
        }
    }

    /// A short description of the value's type, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool => "bool".into(),
            Value::Int(_) | Value::BigInt => "int".into(),
            Value::Float => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Set(_) => "set".into(),
            Value::Global(g) => format!("{}.{}", g.0, g.1),
            Value::Object(o) => match o.borrow().callable.global() {
                Some((m, n)) => format!("{m}.{n} object"),
                None => "object".into(),
            },
            Value::PersId(_) => "persistent id".into(),
        }
    }
}

/// A pickle program, run over a byte slice.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Positions in `stack` of the pending MARKs.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

type R<T> = std::result::Result<T, String>;

/// Runs the pickle in `data` and returns the object it builds.
pub(crate) fn load(data: &[u8]) -> R<Value> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::with_capacity(64),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    m.run()
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> R<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "pickle ends early (wanted {n} bytes at offset {})",
                    self.pos
                )
            })?;
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
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle ends inside a text line")?;
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

    fn set_items(&mut self, kv: Vec<Value>) -> R<()> {
        if kv.len() % 2 != 0 {
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
                    let items = match &args {
                        Value::Tuple(t) => match t.first() {
                            Some(Value::List(l)) => l.borrow().clone(),
                            _ => Vec::new(),
                        },
                        _ => Vec::new(),
                    };
                    return Value::Set(Rc::new(RefCell::new(items)));
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

    fn long_bytes(b: &[u8]) -> Value {
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

    fn run(&mut self) -> R<Value> {
        loop {
            let op = self.u8()?;
            match op {
                // --- framing and protocol
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(format!("unknown pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.le::<8>()?; // FRAME: a size hint only
                }
                b'.' => {
                    // STOP
                    return self.stack.pop().ok_or_else(|| "empty pickle".into());
                }
                // --- marks and stack manipulation
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
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)
                }
                // --- scalars
                b'N' => self.push(Value::None),
                0x88 | 0x89 => self.push(Value::Bool),
                b'J' => {
                    let v = i32::from_le_bytes(self.le::<4>()?);
                    self.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le::<2>()?);
                    self.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let v = Self::long_bytes(self.take(n)?);
                    self.push(v)
                }
                0x8b => {
                    let n = self.len_u32()?;
                    let v = Self::long_bytes(self.take(n)?);
                    self.push(v)
                }
                b'I' | b'L' => {
                    let v = Self::int_text(self.line()?);
                    self.push(v)
                }
                b'G' => {
                    self.le::<8>()?;
                    self.push(Value::Float)
                }
                b'F' => {
                    self.line()?;
                    self.push(Value::Float)
                }
                // --- strings and bytes
                b'X' => {
                    let n = self.len_u32()?;
                    let v = Self::str_value(self.take(n)?)?;
                    self.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = Self::str_value(self.take(n)?)?;
                    self.push(v)
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = Self::str_value(self.take(n)?)?;
                    self.push(v)
                }
                b'V' => {
                    // raw-unicode-escape text; only ASCII names matter to us
                    let v = Value::Str(self.line()?.into());
                    self.push(v)
                }
                b'S' => {
                    let l = self.line()?;
                    let v = Value::Str(l.trim_matches(|c| c == '\'' || c == '"').into());
                    self.push(v)
                }
                b'T' | b'B' => {
                    let n = self.len_u32()?;
                    let b = self.take(n)?;
                    let v = if op == b'T' {
                        Value::Str(String::from_utf8_lossy(b).into())
                    } else {
                        Value::Bytes
                    };
                    self.push(v)
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let v = if op == b'U' {
                        Value::Str(String::from_utf8_lossy(b).into())
                    } else {
                        Value::Bytes
                    };
                    self.push(v)
                }
                0x8e | 0x96 => {
                    let n = self.len_u64()?;
                    self.take(n)?;
                    self.push(Value::Bytes)
                }
                // --- containers
                b')' => self.push(Value::Tuple(Rc::from(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items.into()))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n || self.marks.last().is_some_and(|&m| m > self.stack.len() - n) {
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
                    let items = self.pop_mark()?;
                    self.push(Value::Set(Rc::new(RefCell::new(items))))
                }
                // --- memo
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
                // --- globals and object construction (never executed)
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push(Value::Global(Rc::new((module, name))))
                }
                0x93 => {
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
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Value::object(cls, args))
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Value::object(cls, args))
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let args = self.pop_mark()?;
                    let cls = Value::Global(Rc::new((module, name)));
                    self.push(Value::object(cls, Value::Tuple(args.into())))
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err("OBJ without a class".into());
                    }
                    let cls = items.remove(0);
                    self.push(Value::object(cls, Value::Tuple(items.into())))
                }
                b'b' => self.build()?,
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Value::PersId(Rc::new(id)))
                }
                b'P' => {
                    let id = Value::Str(self.line()?.into());
                    self.push(Value::PersId(Rc::new(id)))
                }
                0x82..=0x84 => return Err("pickle uses the copyreg extension registry (EXT opcodes), which is not supported".into()),
                0x97 | 0x98 => return Err("pickle uses out-of-band buffers (protocol 5), which are not supported".into()),
                other => {
                    return Err(format!(
                        "unknown pickle opcode 0x{other:02x} at offset {}",
                        self.pos - 1
                    ))
                }
            }
        }
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
