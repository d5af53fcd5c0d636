//! The part of Python's pickle format that PyTorch's `torch.save` writes, read as data and never
//! run: a stack machine whose only "calls" are the few that rebuild tensors and containers,
//! the globals `torch.load(weights_only=True)` allows. Any other global (`os.system`, a class of
//! someone's project) is refused with its name before anything else happens; nothing in a file
//! is ever executed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tch::Kind;

/// A value on the machine's stack: Python's built-in values, and what the allowed calls make.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond 64 bits, little-endian two's complement (the legacy format's magic).
    Long(Rc<[u8]>),
    /// A float or a bytes object: read past, their values never needed.
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<[Value]>),
    List(Shared<Vec<Value>>),
    /// A dict or an `OrderedDict`, its items in order.
    Dict(Shared<Vec<(Value, Value)>>),
    /// One of the allowed globals, not yet called.
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

type Shared<T> = Rc<RefCell<T>>;

/// The globals a PyTorch state_dict's pickle may name: all of them data, none of them code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    /// `_codecs.encode(str, "latin1")`: how protocol 2 pickles `bytes`.
    Encode,
    /// A storage class (`torch.FloatStorage`, ...), by its element type.
    StorageType(Kind),
}

impl Global {
    /// The allowed global `module.name`, or the one-line refusal.
    fn find(module: &str, name: &str) -> Result<Global, String> {
        let storage = |kind| Ok(Global::StorageType(kind));
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor") => Ok(Global::RebuildTensor),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
            ("torch._utils", "_rebuild_parameter_with_state") => Ok(Global::RebuildParameterWithState),
            ("_codecs", "encode") => Ok(Global::Encode),
            ("torch", "FloatStorage") => storage(Kind::Float),
            ("torch", "DoubleStorage") => storage(Kind::Double),
            ("torch", "HalfStorage") => storage(Kind::Half),
            ("torch", "BFloat16Storage") => storage(Kind::BFloat16),
            ("torch", "LongStorage") => storage(Kind::Int64),
            ("torch", "IntStorage") => storage(Kind::Int),
            ("torch", "ShortStorage") => storage(Kind::Int16),
            ("torch", "CharStorage") => storage(Kind::Int8),
            ("torch", "ByteStorage" | "UntypedStorage") => storage(Kind::Uint8),
            ("torch", "BoolStorage") => storage(Kind::Bool),
            _ => Err(format!(
                "refusing the global {module}.{name}: a weights file holds tensors, storages and containers, nothing \
                 else (as torch.load(weights_only=True) allows); nothing was run"
            )),
        }
    }
}

/// A storage a persistent id names: its element type and its key in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub kind: Kind,
    pub key: String,
    /// Elements, as the persistent id states them.
    pub numel: Option<u64>,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// A pickle that cannot be read: why, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} (pickle byte {at})")]
pub struct PickleError {
    pub reason: String,
    pub at: usize,
}

/// Reads one pickle from the start of `bytes`; returns its value and the bytes it used.
pub fn read(bytes: &[u8]) -> Result<(Value, usize), PickleError> {
    let mut machine = Machine {
        input: bytes,
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        containers: Vec::new(),
    };
    let result = machine.run();
    // Lists and dicts can hold themselves: empty them all, so that no cycle outlives the read.
    let containers = std::mem::take(&mut machine.containers);
    let value = result.map(|value| (detach(&value, 0), machine.at));
    for container in containers {
        match container {
            Value::List(list) => list.borrow_mut().clear(),
            Value::Dict(dict) => dict.borrow_mut().clear(),
            _ => {}
        }
    }
    value.and_then(|(value, used)| Ok((value.map_err(|reason| PickleError { reason, at: used })?, used)))
}

/// How deep containers may nest: far beyond any state dict, and a bound for hostile files.
const MAX_DEPTH: usize = 64;

/// A copy of `value` whose containers are its own (not shared with the machine's memo), so that
/// emptying the machine's containers leaves it whole.
fn detach(value: &Value, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("containers nested more than {MAX_DEPTH} deep"));
    }
    Ok(match value {
        Value::Tuple(items) => Value::Tuple(items.iter().map(|v| detach(v, depth + 1)).collect::<Result<_, _>>()?),
        Value::List(items) => {
            let items: Result<Vec<Value>, String> = items.borrow().iter().map(|v| detach(v, depth + 1)).collect();
            Value::List(Rc::new(RefCell::new(items?)))
        }
        Value::Dict(items) => {
            let items: Result<Vec<(Value, Value)>, String> =
                items.borrow().iter().map(|(k, v)| Ok((detach(k, depth + 1)?, detach(v, depth + 1)?))).collect();
            Value::Dict(Rc::new(RefCell::new(items?)))
        }
        other => other.clone(),
    })
}

struct Machine<'a> {
    input: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    /// Where each open MARK left the stack.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Every list and dict made, to empty at the end (see [`read`]).
    containers: Vec<Value>,
}

impl Machine<'_> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError { reason: reason.into(), at: self.at })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        if self.input.len() - self.at < n {
            return self.fail(format!("the pickle ends within a value ({n} bytes wanted)"));
        }
        let bytes = &self.input[self.at..self.at + n];
        self.at += n;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> Result<u64, PickleError> {
        let bytes = self.take(n)?;
        Ok(bytes.iter().rev().fold(0u64, |v, &b| (v << 8) | b as u64))
    }

    /// A length prefix of `n` bytes, checked against what is left of the input.
    fn length(&mut self, n: usize) -> Result<usize, PickleError> {
        let length = self.uint(n)?;
        if length > (self.input.len() - self.at) as u64 {
            return self.fail(format!("a value of {length} bytes, more than the pickle holds"));
        }
        Ok(length as usize)
    }

    /// A line of text (protocol 0's arguments), without its newline.
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.input[self.at..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return self.fail("the pickle ends within a line");
        };
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(text)
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return self.fail("a value taken from beyond a mark");
        }
        match self.stack.pop() {
            Some(value) => Ok(value),
            None => self.fail("the stack is empty"),
        }
    }

    /// The values pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.marks.pop() else { return self.fail("no mark to return to") };
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        match self.stack.last() {
            Some(value) if self.marks.last().is_none_or(|&m| m < self.stack.len()) => Ok(value),
            _ => self.fail("the stack is empty"),
        }
    }

    fn list(&mut self, items: Vec<Value>) -> Value {
        let list = Value::List(Rc::new(RefCell::new(items)));
        self.containers.push(list.clone());
        list
    }

    fn dict(&mut self, items: Vec<(Value, Value)>) -> Value {
        let dict = Value::Dict(Rc::new(RefCell::new(items)));
        self.containers.push(dict.clone());
        dict
    }

    fn text(&mut self, n: usize) -> Result<Value, PickleError> {
        let length = self.length(n)?;
        let bytes = self.take(length)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(Value::Str(text.into())),
            Err(_) => self.fail("a string that is not UTF-8"),
        }
    }

    fn int_bytes(&mut self, n: usize) -> Result<Value, PickleError> {
        let length = self.length(n)?;
        let bytes = self.take(length)?.to_vec();
        if bytes.len() <= 8 {
            let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
            let fill = if negative { 0xFF } else { 0 };
            let mut full = [fill; 8];
            full[..bytes.len()].copy_from_slice(&bytes);
            return Ok(Value::Int(i64::from_le_bytes(full)));
        }
        Ok(Value::Long(bytes.into()))
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let op = self.byte()?;
            match op {
                0x80 => {
                    let protocol = self.byte()?;
                    if protocol > 5 {
                        return self.fail(format!("pickle protocol {protocol}, newer than 5"));
                    }
                }
                0x95 => {
                    self.uint(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?.clone();
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let v = self.int_bytes(1)?;
                    self.stack.push(v);
                }
                0x8b => {
                    let v = self.int_bytes(4)?;
                    self.stack.push(v);
                }
                b'I' | b'L' => {
                    let line = self.line()?;
                    let text = line.trim_end_matches('L');
                    let value = match text {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => match text.parse::<i64>() {
                            Ok(v) => Value::Int(v),
                            Err(_) => return self.fail(format!("an integer {line:?} this reader cannot hold")),
                        },
                    };
                    self.stack.push(value);
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float);
                }
                b'F' => {
                    self.line()?;
                    self.stack.push(Value::Float);
                }
                b'X' => {
                    let v = self.text(4)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let v = self.text(1)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let v = self.text(8)?;
                    self.stack.push(v);
                }
                b'V' => {
                    let line = self.line()?;
                    self.stack.push(Value::Str(line.into()));
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let width = match op {
                        b'U' | b'C' => 1,
                        b'T' | b'B' => 4,
                        _ => 8,
                    };
                    let length = self.length(width)?;
                    self.take(length)?;
                    self.stack.push(Value::Bytes);
                }
                b'S' => {
                    self.line()?;
                    self.stack.push(Value::Bytes);
                }
                b')' => self.stack.push(Value::Tuple(Rc::new([]))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items.into()));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(items.into()));
                }
                b']' => {
                    let list = self.list(Vec::new());
                    self.stack.push(list);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let list = self.list(items);
                    self.stack.push(list);
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => {
                    let dict = self.dict(Vec::new());
                    self.stack.push(dict);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let dict = self.dict(pairs);
                    self.stack.push(dict);
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = self.global(&module, &name)?;
                    self.stack.push(global);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return self.fail("STACK_GLOBAL of values that are not strings");
                    };
                    let global = self.global(&module, &name)?;
                    self.stack.push(global);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = self.reduce(callable, args)?;
                    self.stack.push(value);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args), which an OrderedDict alone may use here.
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let value = self.reduce(class, args)?;
                    self.stack.push(value);
                }
                b'b' => {
                    let _state = self.pop()?;
                    // The state of an OrderedDict (its `_metadata`) tells nothing about the tensors.
                    if !matches!(self.top()?, Value::Dict(_)) {
                        return self.fail("BUILD on a value that is not a dict");
                    }
                }
                b'Q' => {
                    let id = self.pop()?;
                    let storage = self.storage(id)?;
                    self.stack.push(storage);
                }
                b'P' => return self.fail("a text persistent id (protocol 0), which torch.save never writes"),
                b'p' | b'q' | b'r' | 0x94 => {
                    let key = self.memo_key(op)?;
                    self.put(key)?;
                }
                b'g' | b'h' | b'j' => {
                    let key = self.memo_key(op)?;
                    self.get(key)?;
                }
                _ => return self.fail(format!("pickle opcode 0x{op:02x}, which torch.save does not write")),
            }
        }
    }

    fn global(&self, module: &str, name: &str) -> Result<Value, PickleError> {
        match Global::find(module, name) {
            Ok(global) => Ok(Value::Global(global)),
            Err(reason) => self.fail(reason),
        }
    }

    /// The memo key of a PUT or GET: a line of digits (protocol 0), 1 or 4 bytes, or, for
    /// MEMOIZE, the next free one.
    fn memo_key(&mut self, op: u8) -> Result<u64, PickleError> {
        match op {
            b'p' | b'g' => {
                let line = self.line()?;
                line.parse::<u64>().or_else(|_| self.fail(format!("a memo key {line:?}")))
            }
            b'q' | b'h' => self.uint(1),
            b'r' | b'j' => self.uint(4),
            _ => Ok(self.memo.len() as u64),
        }
    }

    fn put(&mut self, key: u64) -> Result<(), PickleError> {
        let top = self.top()?.clone();
        self.memo.insert(key, top);
        Ok(())
    }

    fn get(&mut self, key: u64) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(value) => {
                let value = value.clone();
                self.stack.push(value);
                Ok(())
            }
            None => self.fail(format!("memo entry {key}, which was never stored")),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        match self.top()? {
            Value::List(list) => {
                list.borrow_mut().extend(items);
                Ok(())
            }
            _ => self.fail("APPEND to a value that is not a list"),
        }
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return self.fail("a dict's items are not key-value pairs");
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            pairs.push((key, value));
        }
        Ok(pairs)
    }

    fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> Result<(), PickleError> {
        match self.top()? {
            Value::Dict(dict) => {
                let mut dict = dict.borrow_mut();
                for (key, value) in pairs {
                    // A key set again replaces its value, as in a Python dict.
                    match dict.iter_mut().find(|(k, _)| same_key(k, &key)) {
                        Some(slot) => slot.1 = value,
                        None => dict.push((key, value)),
                    }
                }
                Ok(())
            }
            _ => self.fail("SETITEM on a value that is not a dict"),
        }
    }

    /// A persistent id: `('storage', type, key, location, numel[, view metadata])`.
    fn storage(&self, id: Value) -> Result<Value, PickleError> {
        let Value::Tuple(fields) = &id else { return self.fail("a persistent id that is not a tuple") };
        match &fields[..] {
            [Value::Str(tag), Value::Global(Global::StorageType(kind)), key, _location, numel, ..]
                if &**tag == "storage" =>
            {
                let key = match key {
                    Value::Str(key) => key.to_string(),
                    Value::Int(key) => key.to_string(),
                    _ => return self.fail("a storage key that is neither a string nor an integer"),
                };
                let numel = match numel {
                    Value::Int(n) if *n >= 0 => Some(*n as u64),
                    _ => None,
                };
                Ok(Value::Storage(Rc::new(StorageRef { kind: *kind, key, numel })))
            }
            _ => self.fail("a persistent id that is not a storage's ('storage', type, key, location, size)"),
        }
    }

    /// Calls one of the allowed globals.
    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(global) = callable else { return self.fail("a call of something that is not a global") };
        let Value::Tuple(args) = args else { return self.fail("a call whose arguments are not a tuple") };
        match (global, &args[..]) {
            (Global::OrderedDict, []) => Ok(self.dict(Vec::new())),
            (Global::RebuildTensor | Global::RebuildTensorV2, [storage, offset, size, stride, ..]) => {
                let (Value::Storage(storage), Value::Int(offset)) = (storage, offset) else {
                    return self.fail("a tensor rebuilt from something other than a storage and an offset");
                };
                let dims = |v: &Value| -> Option<Vec<i64>> {
                    match v {
                        Value::Tuple(items) => {
                            items.iter().map(|d| if let Value::Int(d) = d { Some(*d) } else { None }).collect()
                        }
                        _ => None,
                    }
                };
                let (Some(size), Some(stride)) = (dims(size), dims(stride)) else {
                    return self.fail("a tensor whose size or stride is not a tuple of integers");
                };
                if size.len() != stride.len() || size.iter().chain(&stride).chain([offset]).any(|&d| d < 0) {
                    return self.fail(format!("a tensor of size {size:?}, stride {stride:?} and offset {offset}"));
                }
                let tensor = TensorRef { storage: (**storage).clone(), offset: *offset, size, stride };
                Ok(Value::Tensor(Rc::new(tensor)))
            }
            (Global::RebuildParameter | Global::RebuildParameterWithState, [data @ Value::Tensor(_), ..]) => {
                Ok(data.clone())
            }
            (Global::Encode, [Value::Str(_), ..]) => Ok(Value::Bytes),
            (global, args) => self.fail(format!("{global:?} called with {} arguments it does not take", args.len())),
        }
    }
}

/// Whether two dict keys are the same (strings and integers: all a state dict's keys are).
fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(a), Value::Str(b)) => a == b,
        (Value::Int(a), Value::Int(b)) => a == b,
        _ => false,
    }
}
