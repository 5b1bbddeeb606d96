//! The values the pickle machine builds: plain Python data, and inert records of the objects
//! the pickle would construct by a call.

use std::cell::RefCell;
use std::rc::Rc;

/// A value on the pickle stack.
#[derive(Clone, Debug, Default)]
pub(crate) enum Value {
    #[default]
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

/// Values are dropped with an explicit work list rather than by recursion, so that a pickle
/// nested 100k deep (lists, dicts, tuples, objects) cannot overflow the stack when freed.
impl Drop for Value {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut v) = pending.pop() {
            v.take_children(&mut pending);
            // `v` now owns no children uniquely: dropping it recurses at most one level.
        }
    }
}

impl Value {
    /// Moves the children this value owns alone (sole reference) into `out`.
    fn take_children(&mut self, out: &mut Vec<Value>) {
        match self {
            Value::List(rc) | Value::Set(rc) => {
                if let Some(cell) = Rc::get_mut(rc) {
                    out.append(cell.get_mut());
                }
            }
            Value::Dict(rc) => {
                if let Some(cell) = Rc::get_mut(rc) {
                    for (k, v) in cell.get_mut().drain(..) {
                        out.push(k);
                        out.push(v);
                    }
                }
            }
            Value::Tuple(rc) => {
                if let Some(items) = Rc::get_mut(rc) {
                    out.extend(items.iter_mut().map(std::mem::take));
                }
            }
            Value::Object(rc) => {
                if let Some(cell) = Rc::get_mut(rc) {
                    let o = cell.get_mut();
                    out.push(std::mem::take(&mut o.callable));
                    out.push(std::mem::take(&mut o.args));
                    out.extend(o.state.take());
                    for (k, v) in o.items.drain(..) {
                        out.push(k);
                        out.push(v);
                    }
                    out.append(&mut o.list);
                }
            }
            Value::PersId(rc) => {
                if let Some(v) = Rc::get_mut(rc) {
                    out.push(std::mem::take(v));
                }
            }
            _ => {}
        }
    }

    pub(super) fn new_dict(items: Vec<(Value, Value)>) -> Value {
        Value::Dict(Rc::new(RefCell::new(items)))
    }

    pub(super) fn object(callable: Value, args: Value) -> Value {
        Value::Object(Rc::new(RefCell::new(Obj {
            callable,
            args,
            state: None,
            items: Vec::new(),
            list: Vec::new(),
        })))
    }

    /// The address of a dict's or an object's shared contents: equal for two references to
    /// one container (a memo reference), so that a walk can visit it once.
    pub fn identity(&self) -> Option<usize> {
        match self {
            Value::Dict(d) => Some(Rc::as_ptr(d) as *const u8 as usize),
            Value::Object(o) => Some(Rc::as_ptr(o) as *const u8 as usize),
            _ => None,
        }
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
