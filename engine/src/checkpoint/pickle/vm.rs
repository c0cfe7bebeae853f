//! A restricted pickle machine: it builds plain values (None, bools, ints, floats, strings,
//! bytes, tuples, lists, dicts) and the few torch objects a state dict holds (storages named
//! by persistent id, tensors rebuilt by `torch._utils._rebuild_tensor_v2`, an
//! `collections.OrderedDict`). It never imports or calls anything: a GLOBAL outside the
//! allow-list, a REDUCE of anything but the allowed callables, a BUILD on anything but an
//! ordered dict, or any opcode outside protocol 0-5's data opcodes is a named error.

use std::collections::HashMap;
use std::rc::Rc;

use super::torch::{global, persistent_storage, reduce, Global, StorageRef, TensorRef};
use super::PtError;

/// A value of the pickle machine. Tuples, lists and dicts are indices into the arenas of
/// [`Pickle`]; lists and dicts are shared, as in Python, so that an object memoized before
/// it was filled is seen filled when fetched again. Because containers refer to each other
/// by index, a value never owns a tree: dropping one never recurses, and a container that
/// contains itself is harmless until someone walks it (the walk in `super` bounds its
/// depth and its visits).
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A float (its value is never needed: no tensor field is a float).
    Float,
    Str(Rc<str>),
    /// Bytes (kept only as a kind: no tensor field is bytes).
    Bytes,
    Tuple(usize),
    List(usize),
    Dict(usize),
    Global(Global),
    Tensor(Rc<TensorRef>),
    Storage(Rc<StorageRef>),
}

/// A loaded pickle: its root value and the containers it refers to.
#[derive(Debug, Default)]
pub struct Pickle {
    pub root: Option<Value>,
    pub tuples: Vec<Vec<Value>>,
    pub lists: Vec<Vec<Value>>,
    pub dicts: Vec<Vec<(Value, Value)>>,
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Tensor(_) => "tensor",
            Value::Storage(_) => "storage",
        }
    }
}

/// Reads one pickle (up to its STOP opcode).
pub fn load(data: &[u8]) -> Result<Pickle, PtError> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        out: Pickle::default(),
    };
    let root = m.run()?;
    m.out.root = Some(root);
    Ok(m.out)
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    out: Pickle,
}

fn small(v: usize) -> Value {
    Value::Int(v as i64)
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PtError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or(PtError::Truncated {
            what: "pickle",
            at: self.pos,
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PtError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, PtError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64, PtError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    fn len_u64(&mut self) -> Result<usize, PtError> {
        let v = self.u64()?;
        usize::try_from(v).map_err(|_| PtError::TooLarge(format!("a pickle length of {v}")))
    }

    fn line(&mut self) -> Result<&'a str, PtError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or(PtError::Truncated {
                what: "pickle GLOBAL line",
                at: self.pos,
            })?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| PtError::Malformed {
            at: self.pos,
            msg: "GLOBAL line is not UTF-8".into(),
        })?;
        self.pos += n + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> Result<Value, PtError> {
        let at = self.pos;
        let s = self.take(n)?;
        let s = std::str::from_utf8(s).map_err(|_| PtError::Malformed {
            at,
            msg: "string is not UTF-8".into(),
        })?;
        Ok(Value::Str(s.into()))
    }

    fn pop(&mut self) -> Result<Value, PtError> {
        self.stack.pop().ok_or(PtError::Malformed {
            at: self.pos,
            msg: "stack underflow".into(),
        })
    }

    fn top(&mut self) -> Result<&mut Value, PtError> {
        let at = self.pos;
        self.stack.last_mut().ok_or(PtError::Malformed {
            at,
            msg: "stack underflow".into(),
        })
    }

    /// Pops everything above the last MARK (and the mark).
    fn pop_mark(&mut self) -> Result<Vec<Value>, PtError> {
        let m = self.marks.pop().ok_or(PtError::Malformed {
            at: self.pos,
            msg: "no MARK on the stack".into(),
        })?;
        if m > self.stack.len() {
            return Err(PtError::Malformed {
                at: self.pos,
                msg: "MARK above the stack top".into(),
            });
        }
        Ok(self.stack.split_off(m))
    }

    fn push(&mut self, v: Value) -> Result<(), PtError> {
        self.stack.push(v);
        Ok(())
    }

    fn tuple(&mut self, items: Vec<Value>) -> Result<(), PtError> {
        self.out.tuples.push(items);
        self.push(Value::Tuple(self.out.tuples.len() - 1))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PtError> {
        let v = self.top()?.clone();
        // Each memo slot costs at most one opcode's worth of bytes: bounded by the file.
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PtError> {
        let v = self.memo.get(&key).cloned().ok_or(PtError::Malformed {
            at: self.pos,
            msg: format!("memo key {key} was never stored"),
        })?;
        self.push(v)
    }

    fn run(&mut self) -> Result<Value, PtError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(PtError::Malformed {
                            at,
                            msg: format!("pickle protocol {proto} is unknown"),
                        });
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'K' => {
                    let v = self.u8()?;
                    self.push(small(v.into()))?
                }
                b'M' => {
                    let s = self.take(2)?;
                    self.push(small(u16::from_le_bytes([s[0], s[1]]).into()))?
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v.into()))?
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let s = self.take(n)?;
                    if n > 8 {
                        return Err(PtError::TooLarge(format!(
                            "a {n}-byte integer at byte {at}"
                        )));
                    }
                    let fill = if s.last().is_some_and(|&b| b & 0x80 != 0) {
                        0xFF
                    } else {
                        0
                    };
                    let mut a = [fill; 8];
                    a[..n].copy_from_slice(s);
                    self.push(Value::Int(i64::from_le_bytes(a)))?
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    self.push(v)?
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.text(n)?;
                    self.push(v)?
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.text(n)?;
                    self.push(v)?
                }
                b'U' | b'T' => {
                    // Protocol-2 byte strings (Python 2 `str`), read as Latin-1 text.
                    let n = if op == b'U' {
                        usize::from(self.u8()?)
                    } else {
                        self.u32()? as usize
                    };
                    let s: String = self.take(n)?.iter().map(|&c| char::from(c)).collect();
                    self.push(Value::Str(s.into()))?
                }
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => usize::from(self.u8()?),
                        b'B' => self.u32()? as usize,
                        _ => self.len_u64()?,
                    };
                    self.take(n)?;
                    self.push(Value::Bytes)?
                }
                b')' => self.tuple(Vec::new())?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items)?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err(PtError::Malformed {
                            at,
                            msg: "stack underflow".into(),
                        });
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.tuple(items)?
                }
                b']' => {
                    self.out.lists.push(Vec::new());
                    self.push(Value::List(self.out.lists.len() - 1))?
                }
                b'}' => self.new_dict()?,
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(at, vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(at, items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(at, vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(at, items)?
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(k.into())?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = u32::try_from(self.memo.len())
                        .map_err(|_| PtError::TooLarge("memo".into()))?;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(k.into())?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(global(module, name)?))?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = global(m, n)?;
                            self.push(Value::Global(g))?
                        }
                        _ => {
                            return Err(PtError::Malformed {
                                at,
                                msg: "STACK_GLOBAL needs two strings".into(),
                            })
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let s =
                        persistent_storage(&self.out, &pid).map_err(|msg| PtError::Storage {
                            key: "?".into(),
                            msg,
                        })?;
                    self.push(Value::Storage(Rc::new(s)))?
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    if let (Value::Global(Global::OrderedDict), Value::Tuple(t)) = (&f, &args) {
                        if self.out.tuples[*t].is_empty() {
                            self.new_dict()?;
                            continue;
                        }
                    }
                    let v = reduce(&self.out, &f, &args)?;
                    self.push(v)?
                }
                b'b' => {
                    let state = self.pop()?;
                    // An OrderedDict with instance attributes (a state dict's `_metadata`)
                    // pickles them as BUILD state; they carry no tensors and are dropped.
                    match (self.top()?, &state) {
                        (Value::Dict(_), Value::Dict(_)) | (Value::Dict(_), Value::None) => {}
                        (obj, _) => {
                            return Err(PtError::Build {
                                target: obj.kind().into(),
                                state: state.kind().into(),
                            })
                        }
                    }
                }
                other => return Err(PtError::Opcode { op: other, at }),
            }
        }
    }

    fn new_dict(&mut self) -> Result<(), PtError> {
        self.out.dicts.push(Vec::new());
        self.push(Value::Dict(self.out.dicts.len() - 1))
    }

    fn extend_list(&mut self, at: usize, items: Vec<Value>) -> Result<(), PtError> {
        let list = match self.top()? {
            Value::List(l) => *l,
            other => {
                return Err(PtError::Malformed {
                    at,
                    msg: format!("APPEND to a {}", other.kind()),
                })
            }
        };
        self.out.lists[list].extend(items);
        Ok(())
    }

    fn extend_dict(&mut self, at: usize, items: Vec<Value>) -> Result<(), PtError> {
        let dict = match self.top()? {
            Value::Dict(d) => *d,
            other => {
                return Err(PtError::Malformed {
                    at,
                    msg: format!("SETITEM on a {}", other.kind()),
                })
            }
        };
        if items.len() % 2 != 0 {
            return Err(PtError::Malformed {
                at,
                msg: "SETITEMS with an odd number of items".into(),
            });
        }
        let mut it = items.into_iter();
        let d = &mut self.out.dicts[dict];
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let Some(slot) = d.iter_mut().find(|(old, _)| same_key(old, &k)) {
                slot.1 = v;
            } else {
                d.push((k, v));
            }
        }
        Ok(())
    }
}

fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::None, Value::None) => true,
        _ => false,
    }
}
