//! The values the pickle machine builds: plain Python data, and inert records of the objects
//! the pickle would construct by a call.

use std::cell::RefCell;
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
