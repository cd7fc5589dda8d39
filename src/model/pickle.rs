//! A restricted reader for the `data.pkl` of a PyTorch zip checkpoint.
//!
//! It runs only the pickle opcodes `torch.save` writes for a state dict (protocol 2, plus the
//! protocol 4 framing opcodes) and knows only the globals such a file names:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`
//! and the typed storage classes. Nothing is imported or called: a global is a tag, and a
//! `REDUCE` of one of the known callables builds the matching value.
//!
//! Everything a hostile file could use to exhaust memory or the stack is bounded (see [`Limits`]):
//! the input length, the number of values created (memo lookups share values by reference
//! counting, and copying a shared container on mutation is charged for every element copied), the
//! nesting depth of containers (checked when a container grows, so dropping a value never
//! recurses deeper than the bound) and the number of open marks. Containers cannot contain
//! themselves: a mutated container that is also in the memo is copied first, so no reference
//! cycle can be built.

use std::collections::HashMap;
use std::rc::Rc;

/// Bounds applied while reading a pickle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted pickle, in bytes.
    pub max_bytes: usize,
    /// Values created (including elements copied), in total.
    pub max_values: usize,
    /// Deepest nesting of containers.
    pub max_depth: usize,
    /// Marks open at once.
    pub max_marks: usize,
    /// Memo entries.
    pub max_memo: usize,
}

impl Default for Limits {
    /// A state dict of the release model is about 100 kB of pickle, ~25,000 values, depth 4.
    fn default() -> Self {
        Self {
            max_bytes: 16 << 20,
            max_values: 2_000_000,
            max_depth: 32,
            max_marks: 64,
            max_memo: 1_000_000,
        }
    }
}

/// Bytes of memory one value may take at most while reading (an enum slot plus its share of a
/// container's header), used to state the reader's allocation bound.
pub const BYTES_PER_VALUE: usize = 64;

/// A pickle the reader refuses, with the byte offset of the opcode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data.pkl at byte {pos}: {message}")]
pub struct PickleError {
    /// Offset of the opcode (or of the end of the input).
    pub pos: usize,
    /// What is wrong.
    pub message: String,
}

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageDType {
    /// `torch.FloatStorage`.
    F32,
    /// `torch.HalfStorage`.
    F16,
    /// `torch.BFloat16Storage`.
    BF16,
    /// `torch.DoubleStorage`.
    F64,
    /// `torch.LongStorage`.
    I64,
    /// `torch.ByteStorage`.
    U8,
}

impl StorageDType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::F64 | Self::I64 => 8,
            Self::U8 => 1,
        }
    }

    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "ByteStorage" => Self::U8,
            _ => return None,
        })
    }
}

/// One tensor of a state dict, as the pickle declares it (nothing is read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// Key in the state dict.
    pub name: String,
    /// Storage key: the entry `data/<key>` of the archive.
    pub storage: String,
    /// Element type.
    pub dtype: StorageDType,
    /// Elements in the whole storage, as declared.
    pub storage_len: usize,
    /// Offset of the tensor's first element in the storage, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

impl TensorRef {
    /// Elements of the tensor, or `None` on overflow.
    pub fn elem_count(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }

    /// One past the last storage element the tensor touches (its offset for an empty tensor),
    /// or `None` on overflow.
    pub fn storage_end(&self) -> Option<usize> {
        if self.shape.contains(&0) {
            return Some(self.offset);
        }
        let mut last = self.offset;
        for (&d, &s) in self.shape.iter().zip(&self.stride) {
            last = last.checked_add((d - 1).checked_mul(s)?)?;
        }
        last.checked_add(1)
    }

    /// True when the elements lie in order, one after another, from the offset.
    pub fn is_contiguous(&self) -> bool {
        let mut want = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != want {
                return false;
            }
            want = want.saturating_mul(d);
        }
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(StorageDType),
}

#[derive(Debug, Clone)]
struct Seq {
    items: Vec<Value>,
    depth: usize,
}

#[derive(Debug, Clone)]
struct Dict {
    items: Vec<(Value, Value)>,
    depth: usize,
}

#[derive(Debug, Clone)]
struct Storage {
    dtype: StorageDType,
    key: Rc<str>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Tensor {
    storage: Rc<Storage>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Global(Global),
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Dict>),
    Storage(Rc<Storage>),
    Tensor(Rc<Tensor>),
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Self::Tuple(s) | Self::List(s) => s.depth,
            Self::Dict(d) => d.depth,
            _ => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Bool => "a bool",
            Self::Int(_) => "an int",
            Self::Float => "a float",
            Self::Str(_) => "a string",
            Self::Global(_) => "a class",
            Self::Tuple(_) => "a tuple",
            Self::List(_) => "a list",
            Self::Dict(_) => "a dict",
            Self::Storage(_) => "a storage",
            Self::Tensor(_) => "a tensor",
        }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    limits: Limits,
    values: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            pos: self.op_pos,
            message: message.into(),
        })
    }

    fn charge(&mut self, n: usize) -> Result<(), PickleError> {
        self.values = self.values.saturating_add(n);
        if self.values > self.limits.max_values {
            return self.err(format!(
                "more than {} values (a pickle built to exhaust memory?)",
                self.limits.max_values
            ));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(PickleError {
                pos: self.data.len(),
                message: "ends in the middle of an opcode".to_owned(),
            });
        };
        let data = self.data;
        let s = &data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let data = self.data;
        let rest = &data[self.pos..];
        let Some(n) = rest.iter().take(256).position(|&b| b == b'\n') else {
            return self.err("a GLOBAL name is unterminated or longer than 256 bytes");
        };
        let s =
            std::str::from_utf8(&rest[..n]).or_else(|_| self.err("a GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        self.charge(1)?;
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("pops from an empty stack");
        }
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("pops from an empty stack"),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(m) = self.marks.pop() else {
            return self.err("no MARK to close");
        };
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn top_mut(&mut self) -> Result<&mut Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("needs a value on the stack");
        }
        let pos = self.op_pos;
        self.stack.last_mut().ok_or(PickleError {
            pos,
            message: "needs a value on the stack".to_owned(),
        })
    }

    fn seq(&mut self, items: Vec<Value>) -> Result<Seq, PickleError> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > self.limits.max_depth {
            return self.err(format!("nests deeper than {}", self.limits.max_depth));
        }
        Ok(Seq { items, depth })
    }

    fn str_value(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).or_else(|_| self.err("a string is not UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let Some(v) = self.stack.last().cloned() else {
            return self.err("memoizes from an empty stack");
        };
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&key) {
            return self.err(format!("more than {} memo entries", self.limits.max_memo));
        }
        self.charge(1)?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let Some(v) = self.memo.get(&key).cloned() else {
            return self.err(format!("memo entry {key} was never stored"));
        };
        self.push(v)
    }

    /// Adds key/value pairs to the dict on top of the stack (copying it first when shared).
    fn set_items(&mut self, pairs: Vec<Value>) -> Result<(), PickleError> {
        if !pairs.len().is_multiple_of(2) {
            return self.err("SETITEMS with an odd number of values");
        }
        let max_depth = self.limits.max_depth;
        let child_depth = pairs.iter().map(Value::depth).max().unwrap_or(0);
        let mut copy_cost = 0;
        let pos = self.op_pos;
        let top = self.top_mut()?;
        let Value::Dict(d) = top else {
            let kind = top.kind();
            return Err(PickleError {
                pos,
                message: format!("SETITEM(S) on {kind}, not a dict"),
            });
        };
        if Rc::strong_count(d) > 1 {
            copy_cost = d.items.len();
        }
        let d = Rc::make_mut(d);
        d.depth = d.depth.max(child_depth + 1);
        if d.depth > max_depth {
            return Err(PickleError {
                pos,
                message: format!("nests deeper than {max_depth}"),
            });
        }
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.items.push((k, v));
        }
        self.charge(copy_cost)
    }

    /// Appends to the list on top of the stack (copying it first when shared).
    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let max_depth = self.limits.max_depth;
        let child_depth = items.iter().map(Value::depth).max().unwrap_or(0);
        let mut copy_cost = 0;
        let pos = self.op_pos;
        let top = self.top_mut()?;
        let Value::List(l) = top else {
            let kind = top.kind();
            return Err(PickleError {
                pos,
                message: format!("APPEND(S) on {kind}, not a list"),
            });
        };
        if Rc::strong_count(l) > 1 {
            copy_cost = l.items.len();
        }
        let l = Rc::make_mut(l);
        l.depth = l.depth.max(child_depth + 1);
        if l.depth > max_depth {
            return Err(PickleError {
                pos,
                message: format!("nests deeper than {max_depth}"),
            });
        }
        l.items.extend(items);
        self.charge(copy_cost)
    }

    fn global(&self, module: &str, name: &str) -> Result<Global, PickleError> {
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
            ("torch", class) => match StorageDType::from_class(class) {
                Some(d) => Ok(Global::Storage(d)),
                None => self.err(format!("refers to torch.{class}, which a state dict does not use")),
            },
            _ => self.err(format!(
                "refers to {module}.{name}, which a state dict does not use (only OrderedDict, tensors and storages are accepted)"
            )),
        }
    }

    fn int_arg(&self, v: &Value, what: &str) -> Result<usize, PickleError> {
        match v {
            Value::Int(i) => {
                usize::try_from(*i).or_else(|_| self.err(format!("{what} is negative ({i})")))
            }
            other => self.err(format!("{what} is {}, not an int", other.kind())),
        }
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<usize>, PickleError> {
        let Value::Tuple(t) = v else {
            return self.err(format!("{what} is {}, not a tuple", v.kind()));
        };
        if t.items.len() > 8 {
            return self.err(format!(
                "{what} has {} dimensions (at most 8)",
                t.items.len()
            ));
        }
        t.items.iter().map(|i| self.int_arg(i, what)).collect()
    }

    fn reduce(&mut self, callable: &Value, args: &Value) -> Result<Value, PickleError> {
        let Value::Global(g) = callable else {
            return self.err(format!(
                "REDUCE calls {}, not a known class",
                callable.kind()
            ));
        };
        let Value::Tuple(args) = args else {
            return self.err(format!("REDUCE arguments are {}, not a tuple", args.kind()));
        };
        let a = &args.items;
        match g {
            Global::OrderedDict => {
                if !a.is_empty() {
                    return self.err("OrderedDict is called with arguments");
                }
                Ok(Value::Dict(Rc::new(Dict {
                    items: Vec::new(),
                    depth: 1,
                })))
            }
            Global::RebuildTensor => {
                if a.len() < 6 || a.len() > 7 {
                    return self.err(format!("_rebuild_tensor_v2 with {} arguments", a.len()));
                }
                let Value::Storage(storage) = &a[0] else {
                    return self.err(format!(
                        "_rebuild_tensor_v2 storage is {}, not a storage",
                        a[0].kind()
                    ));
                };
                let offset = self.int_arg(&a[1], "storage offset")?;
                let shape = self.int_tuple(&a[2], "size")?;
                let stride = self.int_tuple(&a[3], "stride")?;
                if shape.len() != stride.len() {
                    return self.err(format!(
                        "size has {} dimensions but stride {}",
                        shape.len(),
                        stride.len()
                    ));
                }
                if !matches!(a[4], Value::Bool) {
                    return self.err("requires_grad is not a bool");
                }
                Ok(Value::Tensor(Rc::new(Tensor {
                    storage: storage.clone(),
                    offset,
                    shape,
                    stride,
                })))
            }
            Global::RebuildParameter => match a.first() {
                Some(t @ Value::Tensor(_)) if a.len() == 3 => Ok(t.clone()),
                _ => self.err("_rebuild_parameter without a tensor and 3 arguments"),
            },
            Global::Storage(_) => self.err("a storage class is called directly"),
        }
    }

    fn persistent_load(&self, pid: &Value) -> Result<Value, PickleError> {
        let Value::Tuple(t) = pid else {
            return self.err(format!("persistent id is {}, not a tuple", pid.kind()));
        };
        let [tag, class, key, _location, len] = t.items.as_slice() else {
            return self.err(format!("persistent id has {} fields, not 5", t.items.len()));
        };
        if !matches!(tag, Value::Str(s) if &**s == "storage") {
            return self.err("persistent id is not a storage");
        }
        let Value::Global(Global::Storage(dtype)) = class else {
            return self.err(format!(
                "storage class is {}, not a storage class",
                class.kind()
            ));
        };
        let Value::Str(key) = key else {
            return self.err("storage key is not a string");
        };
        if key.is_empty()
            || key.len() > 64
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return self.err(format!("storage key {key:?} is not a plain name"));
        }
        let len = self.int_arg(len, "storage size")?;
        Ok(Value::Storage(Rc::new(Storage {
            dtype: *dtype,
            key: key.clone(),
            len,
        })))
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        return self.err(format!("pickle protocol {proto} (expected 2 to 5)"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= self.limits.max_marks {
                        return self.err(format!("more than {} open MARKs", self.limits.max_marks));
                    }
                    self.charge(1)?;
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool)?,
                0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le::<4>()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le::<2>()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    if n > 8 {
                        return self.err(format!("a {n}-byte integer (at most 8)"));
                    }
                    let bytes = self.take(n)?;
                    let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le::<4>()?) as usize;
                    let v = self.str_value(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.str_value(n)?;
                    self.push(v)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(Value::Global(g))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return self.err("STACK_GLOBAL without two strings");
                    };
                    let g = self.global(m, n)?;
                    self.push(Value::Global(g))?;
                }
                b')' => {
                    let s = self.seq(Vec::new())?;
                    self.push(Value::Tuple(Rc::new(s)))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let s = self.seq(items)?;
                    self.push(Value::Tuple(Rc::new(s)))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let s = self.seq(items)?;
                    self.push(Value::Tuple(Rc::new(s)))?;
                }
                b']' => {
                    let s = self.seq(Vec::new())?;
                    self.push(Value::List(Rc::new(s)))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let s = self.seq(items)?;
                    self.push(Value::List(Rc::new(s)))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => self.push(Value::Dict(Rc::new(Dict {
                    items: Vec::new(),
                    depth: 1,
                })))?,
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'q' => {
                    let k = u32::from(self.u8()?);
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le::<4>()?);
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = u32::try_from(self.memo.len()).or_else(|_| self.err("memo is full"))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = u32::from(self.u8()?);
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le::<4>()?);
                    self.memo_get(k)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(&callable, &args)?;
                    self.push(v)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v)?;
                }
                b'b' => {
                    // The state of an OrderedDict (its `_metadata`) is not needed.
                    let _state = self.pop()?;
                    let top = self.top_mut()?;
                    if !matches!(top, Value::Dict(_)) {
                        let kind = top.kind();
                        return self.err(format!("BUILD on {kind}, not a dict"));
                    }
                }
                other => {
                    return self.err(format!(
                        "opcode 0x{other:02x}, which a state dict does not use"
                    ));
                }
            }
        }
    }
}

/// Runs the pickle and returns the tensors of the state dict it holds: the top-level dict, or
/// the dict under the first of `nested_keys` whose value is a dict of tensors.
pub fn read_state_dict(
    data: &[u8],
    nested_keys: &[&str],
    limits: Limits,
) -> Result<Vec<TensorRef>, PickleError> {
    if data.len() > limits.max_bytes {
        return Err(PickleError {
            pos: 0,
            message: format!(
                "is {} bytes, more than the {} a state dict needs",
                data.len(),
                limits.max_bytes
            ),
        });
    }
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        limits,
        values: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let top = m.run()?;
    let end = m.pos;
    let fail = |message: String| PickleError { pos: end, message };
    let kind = top.kind();
    let Value::Dict(top) = top else {
        return Err(fail(format!("holds {kind}, not a dict of tensors")));
    };
    let has_tensors = top.items.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    let dict = if has_tensors {
        top
    } else {
        let nested = nested_keys.iter().find_map(|want| {
            top.items.iter().find_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Dict(d)) if &**k == *want => Some(d.clone()),
                _ => None,
            })
        });
        match nested {
            Some(d) => d,
            None if top.items.is_empty() => return Ok(Vec::new()),
            None => {
                return Err(fail(format!(
                    "the top-level dict holds no tensors and none of {nested_keys:?}"
                )));
            }
        }
    };
    let mut out = Vec::with_capacity(dict.items.len());
    let mut seen = std::collections::HashSet::new();
    for (k, v) in &dict.items {
        let Value::Str(name) = k else {
            return Err(fail(format!(
                "a state dict key is {}, not a string",
                k.kind()
            )));
        };
        let Value::Tensor(t) = v else {
            return Err(fail(format!("{name} is {}, not a tensor", v.kind())));
        };
        if !seen.insert(name.clone()) {
            return Err(fail(format!("{name} appears twice")));
        }
        out.push(TensorRef {
            name: name.to_string(),
            storage: t.storage.key.to_string(),
            dtype: t.storage.dtype,
            storage_len: t.storage.len,
            offset: t.offset,
            shape: t.shape.clone(),
            stride: t.stride.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(data: &[u8]) -> Result<Vec<TensorRef>, PickleError> {
        read_state_dict(data, &["state_dict"], Limits::default())
    }

    /// `OrderedDict` with one tensor `w` of shape [2, 3] at offset 4 of storage "0" (10 floats).
    fn one_tensor() -> Vec<u8> {
        let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00w".to_vec();
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02(");
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x0atQ");
        p.extend(b"K\x04K\x02K\x03\x86K\x03K\x01\x86\x89h\x00)Rtq\x03Ru.");
        p
    }

    #[test]
    fn reads_a_tensor_declaration() {
        let t = read(&one_tensor()).unwrap();
        assert_eq!(t.len(), 1);
        let t = &t[0];
        assert_eq!(t.name, "w");
        assert_eq!(t.storage, "0");
        assert_eq!(t.dtype, StorageDType::F32);
        assert_eq!((t.storage_len, t.offset), (10, 4));
        assert_eq!(
            (t.shape.as_slice(), t.stride.as_slice()),
            (&[2, 3][..], &[3, 1][..])
        );
        assert!(t.is_contiguous());
        assert_eq!(t.storage_end(), Some(10));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let p = one_tensor();
        for n in 0..p.len() {
            assert!(read(&p[..n]).is_err(), "prefix of {n} bytes was accepted");
        }
    }

    #[test]
    fn unknown_globals_are_refused() {
        let p = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR.";
        let e = read(p).unwrap_err();
        assert!(e.message.contains("os.system"), "{e}");
        assert_eq!(e.pos, 2);
    }

    #[test]
    fn deep_nesting_is_refused() {
        // ]]]]... then APPENDs: each list goes into the one below it.
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.push(b'.');
        let e = read(&p).unwrap_err();
        assert!(e.message.contains("deeper than 32"), "{e}");
        // TUPLE1 nesting.
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85, 1_000_000));
        p.push(b'.');
        let e = read(&p).unwrap_err();
        assert!(e.message.contains("deeper than 32"), "{e}");
    }

    #[test]
    fn memo_amplification_is_bounded() {
        // A list of 1000 items memoized, then fetched and appended to 100,000 times: each append
        // must copy the shared list, and the copies are charged.
        let mut p = b"\x80\x02](".to_vec();
        p.extend(std::iter::repeat_n(b'N', 1000));
        p.extend(b"eq\x00");
        for _ in 0..100_000 {
            p.extend(b"h\x00Na");
        }
        p.push(b'.');
        let e = read(&p).unwrap_err();
        assert!(e.message.contains("values"), "{e}");
        // The classic billion laughs: a tuple of the previous tuple, ten times over, is shared,
        // not copied, so it is cheap, and a dict of it is not a state dict.
        let mut p = b"\x80\x02NN\x86q\x00".to_vec();
        for _ in 0..20 {
            p.extend(b"h\x00h\x00\x86q\x00");
        }
        p.extend(b"0}.");
        assert_eq!(read(&p).unwrap(), vec![]);
    }

    #[test]
    fn self_reference_is_not_a_cycle() {
        // l = []; memo[0] = l; l.append(memo[0]) -- becomes a copy, not a loop.
        let p = b"\x80\x02]q\x00h\x00a0}.";
        assert_eq!(read(p).unwrap(), vec![]);
    }

    #[test]
    fn too_many_marks_and_values() {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b'(', 65));
        assert!(read(&p).unwrap_err().message.contains("MARK"));
        let limits = Limits {
            max_values: 100,
            ..Limits::default()
        };
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b'N', 101));
        assert!(
            read_state_dict(&p, &[], limits)
                .unwrap_err()
                .message
                .contains("values")
        );
    }

    #[test]
    fn nested_state_dict() {
        // {"state_dict": OrderedDict(w=...)}
        let inner = one_tensor();
        let mut p = b"\x80\x02}X\x0a\x00\x00\x00state_dict".to_vec();
        p.extend(&inner[2..inner.len() - 1]);
        p.extend(b"s.");
        let t = read(&p).unwrap();
        assert_eq!(t[0].name, "w");
    }

    #[test]
    fn strides_and_extents() {
        let t = TensorRef {
            name: "x".into(),
            storage: "0".into(),
            dtype: StorageDType::F32,
            storage_len: 100,
            offset: 5,
            shape: vec![3, 4],
            stride: vec![1, 3],
        };
        assert!(!t.is_contiguous());
        assert_eq!(t.storage_end(), Some(5 + 2 + 9 + 1));
        let huge = TensorRef {
            shape: vec![usize::MAX, 2],
            stride: vec![2, 1],
            ..t
        };
        assert_eq!(huge.elem_count(), None);
        assert_eq!(huge.storage_end(), None);
    }
}
