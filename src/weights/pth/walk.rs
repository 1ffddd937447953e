//! The tensors of a `torch.save` pickle, found by walking its values and named as
//! `state_dict()` names them (see the parent module's docs for what is accepted).
use std::path::Path;

use super::{bad, storage_kind, TensorRef};
use crate::weights::pickle::{Id, Node, Object, Pickle};
use crate::weights::WeightsError;

/// Ranks above this are refused (PyTorch's own kernels stop at 25 for many ops).
const MAX_RANK: usize = 64;
/// How deep dicts and modules may nest.
const MAX_DEPTH: usize = 64;
/// How many wrappers (`_rebuild_parameter`, `_rebuild_from_type_v2`) a tensor may be inside.
const MAX_WRAPPERS: usize = 4;
/// Tensors a file may hold (a `state_dict` of ResNeXt-101 has about 1,600; a checkpoint with
/// an optimizer's state and an EMA copy a few times that).
const MAX_TENSORS: usize = 65_536;
/// Longest tensor name (torchvision's longest are about 40 bytes).
const MAX_NAME: usize = 512;
/// Values visited while looking for tensors, at most this many times the pickle's values
/// (shared references could otherwise make the walk exponential).
const VISITS_PER_NODE: usize = 4;

/// The tensors of a pickle, named as `state_dict()` names them (see the module's docs).
pub(super) fn find_tensors(
    path: &Path,
    pickle: &Pickle,
    legacy: bool,
) -> Result<Vec<TensorRef>, WeightsError> {
    let mut walk = Walk {
        pickle,
        legacy,
        visits: pickle.nodes.len().saturating_mul(VISITS_PER_NODE).max(1024),
        tensors: Vec::new(),
    };
    walk.value(pickle.root, "", 0).map_err(|e| bad(path, e))?;
    Ok(walk.tensors)
}

/// The strings of a pickled `set([...])` (or a set literal).
fn set_strings(p: &Pickle, id: Id) -> Vec<&str> {
    let elements = match p.node(id) {
        Node::Set(ids) => ids.clone(),
        Node::Object(o) => (p.seq(o.args))
            .and_then(|a| a.first())
            .and_then(|&l| p.seq(l))
            .map(<[Id]>::to_vec)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    elements.iter().filter_map(|&e| p.str(e)).collect()
}

/// The search for tensors through a pickle's values, with its budget of visits.
struct Walk<'a> {
    pickle: &'a Pickle,
    legacy: bool,
    visits: usize,
    tensors: Vec<TensorRef>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl<'a> Walk<'a> {
    fn value(&mut self, id: Id, name: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nested deeper than {MAX_DEPTH} at `{name}`"));
        }
        if self.visits == 0 {
            return Err("too many shared references among the pickle's values".into());
        }
        self.visits -= 1;
        match self.pickle.node(id) {
            Node::Dict(items) => self.items(items, name, depth),
            Node::Object(object) => self.object(object, name, depth),
            _ => Ok(()),
        }
    }

    /// A dict's entries, named by their string or integer keys.
    fn items(&mut self, items: &[(Id, Id)], name: &str, depth: usize) -> Result<(), String> {
        for &(k, v) in items {
            let key = match (self.pickle.str(k), self.pickle.int(k)) {
                (Some(s), _) => s.to_string(),
                (None, Some(i)) => i.to_string(),
                _ => continue,
            };
            if name.len() + key.len() >= MAX_NAME {
                return Err(format!(
                    "a name longer than {MAX_NAME} bytes under `{name}`"
                ));
            }
            self.value(v, &join(name, &key), depth + 1)?;
        }
        Ok(())
    }

    fn object(&mut self, object: &Object, name: &str, depth: usize) -> Result<(), String> {
        let p = self.pickle;
        let callable = p.global(object.callable).unwrap_or(("", ""));
        if let Some(tensor) = self.tensor(callable, object.args, name)? {
            if self.tensors.len() >= MAX_TENSORS {
                return Err(format!("more than {MAX_TENSORS} tensors"));
            }
            self.tensors.push(tensor);
            return Ok(());
        }
        self.items(&object.items, name, depth)?;
        let Some(state) = object.state else {
            return Ok(());
        };
        // BUILD's state is a dict, or (dict, slots).
        let state = match p.seq(state) {
            Some(&[dict, _]) if matches!(p.node(state), Node::Tuple(_)) => dict,
            _ => state,
        };
        let Node::Dict(fields) = p.node(state) else {
            return Ok(());
        };
        if fields.iter().any(|&(k, _)| p.str(k) == Some("_modules")) {
            return self.module(fields, name, depth);
        }
        self.items(fields, name, depth)
    }

    /// An `nn.Module` pickled whole: its parameters, persistent buffers and submodules.
    fn module(&mut self, fields: &[(Id, Id)], name: &str, depth: usize) -> Result<(), String> {
        let p = self.pickle;
        let field = |key: &str| {
            fields
                .iter()
                .find(|&&(k, _)| p.str(k) == Some(key))
                .map(|&(_, v)| v)
        };
        let non_persistent: Vec<&str> = field("_non_persistent_buffers_set")
            .map(|set| set_strings(p, set))
            .unwrap_or_default();
        for part in ["_parameters", "_buffers", "_modules"] {
            let Some(dict) = field(part) else { continue };
            let items = match p.node(dict) {
                Node::Dict(items) => items.clone(),
                Node::Object(o) => o.items.clone(),
                _ => continue,
            };
            let items: Vec<(Id, Id)> = items
                .into_iter()
                .filter(|&(k, _)| {
                    part != "_buffers" || !p.str(k).is_some_and(|k| non_persistent.contains(&k))
                })
                .collect();
            self.items(&items, name, depth)?;
        }
        Ok(())
    }

    /// The tensor `callable(*args)` rebuilds, if it is one of torch's rebuild functions; the
    /// wrappers (a parameter around a tensor, a subclass around either) are unwrapped at most
    /// [`MAX_WRAPPERS`] deep, in a loop (a crafted chain cannot exhaust the stack).
    fn tensor(
        &mut self,
        mut callable: (&'a str, &'a str),
        mut args: Id,
        name: &str,
    ) -> Result<Option<TensorRef>, String> {
        let p = self.pickle;
        for _ in 0..=MAX_WRAPPERS {
            let list = p.seq(args).unwrap_or(&[]);
            (callable, args) = match callable {
                ("torch._utils", "_rebuild_tensor_v2") => return self.rebuild(list, name).map(Some),
                ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                    match list.first().map(|&t| p.node(t)) {
                        Some(Node::Object(inner)) => {
                            (p.global(inner.callable).unwrap_or(("", "")), inner.args)
                        }
                        _ => return Err(format!("parameter `{name}` holds no tensor")),
                    }
                }
                ("torch._tensor", "_rebuild_from_type_v2") => match list {
                    [func, _, inner_args, ..] => (p.global(*func).unwrap_or(("", "")), *inner_args),
                    _ => return Err(format!("tensor `{name}`: malformed _rebuild_from_type_v2")),
                },
                ("torch._utils", other) if other.starts_with("_rebuild") => {
                    return Err(format!("tensor `{name}` is rebuilt by torch._utils.{other}, which is not read (quantized, sparse or other special tensors)"))
                }
                _ => return Ok(None),
            };
        }
        Err(format!(
            "tensor `{name}` is wrapped more than {MAX_WRAPPERS} times"
        ))
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
    fn rebuild(&self, args: &[Id], name: &str) -> Result<TensorRef, String> {
        let p = self.pickle;
        let malformed = || format!("tensor `{name}`: malformed _rebuild_tensor_v2 arguments");
        let [storage, offset, size, stride, ..] = args else {
            return Err(malformed());
        };
        let Node::PersId(pid) = p.node(*storage) else {
            return Err(malformed());
        };
        let (storage_type, key) = self.storage(*pid, name)?;
        let ints = |id: Id| -> Result<Vec<i64>, String> {
            let seq = p.seq(id).ok_or_else(malformed)?;
            if seq.len() > MAX_RANK {
                return Err(format!(
                    "tensor `{name}` has rank {}; at most {MAX_RANK} is read",
                    seq.len()
                ));
            }
            seq.iter()
                .map(|&d| p.int(d).filter(|&d| d >= 0).ok_or_else(malformed))
                .collect()
        };
        let (shape, stride) = (ints(*size)?, ints(*stride)?);
        let offset = p
            .int(*offset)
            .and_then(|o| u64::try_from(o).ok())
            .ok_or_else(malformed)?;
        if shape.len() != stride.len() {
            return Err(malformed());
        }
        Ok(TensorRef {
            name: name.to_string(),
            kind: storage_kind(&storage_type).map(|(k, _)| k),
            shape,
            storage_type,
            storage: key,
            offset,
            stride,
        })
    }

    /// `('storage', torch.XStorage, key, location, numel[, view_metadata])`: the type's name
    /// and the key.
    fn storage(&self, pid: Id, name: &str) -> Result<(String, String), String> {
        let p = self.pickle;
        let malformed = || format!("tensor `{name}`: malformed storage reference");
        let fields = p.seq(pid).ok_or_else(malformed)?;
        let (ty, key) = match fields {
            [tag, ty, key, _location, _numel, rest @ ..] if p.str(*tag) == Some("storage") => {
                if self.legacy && rest.first().is_some_and(|&v| p.node(v) != &Node::None) {
                    return Err(format!("tensor `{name}` is a view of a legacy storage, which is not read; save it with the zip format"));
                }
                (*ty, *key)
            }
            _ => return Err(malformed()),
        };
        let storage_type = match p.global(ty) {
            Some(("torch", n)) => n.to_string(),
            _ => return Err(malformed()),
        };
        let key = p.str(key).ok_or_else(malformed)?;
        if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
            return Err(format!(
                "tensor `{name}`: storage key `{key}` is not a plain name"
            ));
        }
        Ok((storage_type, key.to_string()))
    }
}
