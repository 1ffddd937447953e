//! The named sections of a checkpoint file: each stateful component's tensors under its own
//! prefix, `<section>/<name>`, and the list of sections in the metadata (so that an empty
//! section, an SGD without momentum say, is told from a missing one).
//!
//! | section | tensors | written by |
//! |---|---|---|
//! | `model` | every variable of the var store, BN statistics included | the trainer |
//! | `optimizer` | `<key>/<parameter>` ([`Optimizer::state_tensors`](super::Optimizer::state_tensors)) | the optimiser |
//! | `<callback>` | [`TrainCallback::state_tensors`](super::TrainCallback::state_tensors) (`ema`: torchvision's names) | each callback |
//!
//! Format 1 had no list and no `optimizer/` prefix: `model/<variable>`, `ema/…` and the
//! optimiser's `<key>/<parameter>` at the top; [`read_sections`] migrates it.
use std::collections::HashMap;

use tch::Tensor;

use crate::io::TensorFile;

/// The metadata key of the list of sections (a JSON array of names, in file order).
const SECTIONS_KEY: &str = "resnext.sections";
/// The model's section.
pub(super) const MODEL: &str = "model";
/// The optimiser's section.
pub(super) const OPTIMIZER: &str = "optimizer";
/// The EMA's section, the only callback section of format 1.
const EMA_V1: &str = "ema";

/// Named tensors of one section, names without the section prefix.
pub(super) type Named = Vec<(String, Tensor)>;

/// The sections of a checkpoint, `(section, its tensors)`, in order.
pub(super) type Sections = Vec<(String, Named)>;

/// The tensors of `sections` under their prefixes, and the metadata entry listing them.
pub(super) fn write_sections(sections: Sections) -> (Named, (String, String)) {
    let names: Vec<&str> = sections.iter().map(|(name, _)| name.as_str()).collect();
    // A list of strings always serialises.
    let list = serde_json::to_string(&names).unwrap_or_default();
    let tensors = sections
        .into_iter()
        .flat_map(|(section, named)| {
            named
                .into_iter()
                .map(move |(n, t)| (format!("{section}/{n}"), t))
        })
        .collect();
    (tensors, (SECTIONS_KEY.to_string(), list))
}

/// The sections of a checkpoint `file` of `format` (1 or 2).
///
/// # Errors
/// A message naming the problem: no list of sections (format 2), a tensor in no listed
/// section.
pub(super) fn read_sections(format: u64, file: TensorFile) -> Result<Sections, String> {
    match format {
        1 => Ok(sections_v1(file.tensors)),
        _ => sections_v2(file.tensors, &file.metadata),
    }
}

/// Format 2: every tensor under one of the listed sections.
fn sections_v2(tensors: Named, metadata: &HashMap<String, String>) -> Result<Sections, String> {
    let list = metadata
        .get(SECTIONS_KEY)
        .ok_or_else(|| format!("no `{SECTIONS_KEY}` metadata listing its sections"))?;
    let names: Vec<String> = serde_json::from_str(list)
        .map_err(|e| format!("unreadable `{SECTIONS_KEY}` metadata: {e}"))?;
    let mut sections: Sections = names.into_iter().map(|n| (n, Vec::new())).collect();
    for (name, t) in tensors {
        let found = name.split_once('/').and_then(|(section, rest)| {
            let at = sections.iter().position(|(s, _)| s == section)?;
            Some((at, rest.to_string()))
        });
        let Some((at, rest)) = found else {
            return Err(format!(
                "tensor `{name}` is in none of its sections (`{SECTIONS_KEY}`)"
            ));
        };
        sections[at].1.push((rest, t));
    }
    Ok(sections)
}

/// Format 1: `model/…` and `ema/…` their sections, other names with a `/` the optimiser's
/// (whole), names without one left in the model's section under their full name, where
/// strict loading reports them.
fn sections_v1(tensors: Named) -> Sections {
    let (mut model, mut optimizer, mut ema) = (Vec::new(), Vec::new(), Vec::new());
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix("model/") {
            model.push((n.to_string(), t));
        } else if let Some(n) = name.strip_prefix("ema/") {
            ema.push((n.to_string(), t));
        } else if name.contains('/') {
            optimizer.push((name, t));
        } else {
            model.push((name, t));
        }
    }
    let mut sections = vec![
        (MODEL.to_string(), model),
        (OPTIMIZER.to_string(), optimizer),
    ];
    if !ema.is_empty() {
        sections.push((EMA_V1.to_string(), ema));
    }
    sections
}

/// Removes the section `name` from `sections`: its tensors, `None` when there is none.
pub(super) fn take_section(sections: &mut Sections, name: &str) -> Option<Named> {
    let at = sections.iter().position(|(s, _)| s == name)?;
    Some(sections.remove(at).1)
}
