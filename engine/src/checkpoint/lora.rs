//! Merging a LoRA into base weights at load: `W <- W + (alpha / rank) * B @ A` for every
//! target Linear (docs/wan.md section 10). LongLive ships its generator as a base checkpoint
//! plus a PEFT LoRA (rank 256, alpha 256) on the ten Linear layers of every block; PEFT
//! names them `base_model.model.<module>.lora_A.weight` `[rank, in]` and
//! `<module>.lora_B.weight` `[out, rank]`. Pure functions on tensors: no file access.
// The Wan family's loader (docs/wan.md, LongLive) merges LoRA files at load; until it is
// wired in, only the tests call this module.
#![cfg_attr(not(feature = "internals"), allow(dead_code))]

use std::collections::BTreeMap;

use crate::error::{fmt_shape, Error, Result};
use crate::tensor::Tensor;

/// The prefix PEFT puts before module names in a LoRA state dict.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The LoRA's hyper-parameters (from the training config; not stored in the file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f32,
}

impl LoraSpec {
    /// The factor `alpha / rank` applied to `B @ A`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// The Linear modules LongLive adapts in a Wan model of `depth` blocks, in the original Wan
/// names: `blocks.l.{self_attn,cross_attn}.{q,k,v,o}` and `blocks.l.ffn.{0,2}`.
pub fn wan_lora_targets(depth: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(depth * 10);
    for l in 0..depth {
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                out.push(format!("blocks.{l}.{attn}.{p}"));
            }
        }
        out.push(format!("blocks.{l}.ffn.0"));
        out.push(format!("blocks.{l}.ffn.2"));
    }
    out
}

fn lora_err(tensor: &str, expected: impl Into<String>, found: impl Into<String>) -> Error {
    Error::Tensor {
        path: "LoRA".into(),
        tensor: tensor.into(),
        expected: expected.into(),
        found: found.into(),
    }
}

/// `weight [out, in] += scale * b [out, rank] @ a [rank, in]`, accumulated in f64 and
/// rounded once. `name` is the module, for errors.
pub fn merge_one(
    name: &str,
    weight: &mut Tensor,
    a: &Tensor,
    b: &Tensor,
    rank: usize,
    scale: f32,
) -> Result<()> {
    let [out, inp] = match weight.shape[..] {
        [o, i] => [o, i],
        _ => {
            return Err(lora_err(
                &format!("{name}.weight"),
                "a 2-D Linear weight",
                fmt_shape(&weight.shape),
            ))
        }
    };
    if a.shape != [rank, inp] {
        return Err(lora_err(
            &format!("{name}.lora_A.weight"),
            format!("shape {} (rank {rank}, in {inp})", fmt_shape(&[rank, inp])),
            format!("shape {}", fmt_shape(&a.shape)),
        ));
    }
    if b.shape != [out, rank] {
        return Err(lora_err(
            &format!("{name}.lora_B.weight"),
            format!("shape {} (out {out}, rank {rank})", fmt_shape(&[out, rank])),
            format!("shape {}", fmt_shape(&b.shape)),
        ));
    }
    let scale = f64::from(scale);
    let mut row = vec![0f64; inp];
    for o in 0..out {
        row.iter_mut().for_each(|x| *x = 0.0);
        for r in 0..rank {
            let bv = f64::from(b.data[o * rank + r]);
            if bv == 0.0 {
                continue;
            }
            for (x, &av) in row.iter_mut().zip(&a.data[r * inp..(r + 1) * inp]) {
                *x += bv * f64::from(av);
            }
        }
        for (w, x) in weight.data[o * inp..(o + 1) * inp].iter_mut().zip(&row) {
            *w = (f64::from(*w) + scale * x) as f32;
        }
    }
    Ok(())
}

/// What [`merge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// Modules merged, in target order.
    pub merged: Vec<String>,
}

/// Merges every target of `targets` from `lora` into `base` (both keyed by tensor name; the
/// LoRA's names may carry `prefix`, e.g. [`PEFT_PREFIX`]). Every target must have both
/// factors, every LoRA tensor must belong to a target, and every factor must have the
/// spec's rank: any mismatch is an error naming the tensor, and `base` is then unchanged.
pub fn merge(
    base: &mut BTreeMap<String, Tensor>,
    lora: &BTreeMap<String, Tensor>,
    prefix: &str,
    spec: &LoraSpec,
    targets: &[String],
) -> Result<MergeReport> {
    if spec.rank == 0 {
        return Err(Error::Invalid("LoRA rank must be at least 1".into()));
    }
    let mut pairs: BTreeMap<&str, [Option<&Tensor>; 2]> =
        targets.iter().map(|t| (t.as_str(), [None, None])).collect();
    for (name, t) in lora {
        let short = name.strip_prefix(prefix).ok_or_else(|| {
            lora_err(
                name,
                format!("a name starting with `{prefix}`"),
                "another prefix",
            )
        })?;
        let (module, slot) = if let Some(m) = short.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = short.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            return Err(lora_err(
                name,
                "`<module>.lora_A.weight` or `<module>.lora_B.weight`",
                "another kind of tensor",
            ));
        };
        let entry = pairs.get_mut(module).ok_or_else(|| {
            lora_err(
                name,
                format!("a factor of one of the {} target modules", targets.len()),
                format!("module `{module}`, which is not a target"),
            )
        })?;
        entry[slot] = Some(t);
    }
    // Check everything before changing anything.
    let mut plan = Vec::with_capacity(targets.len());
    for module in targets {
        let [a, b] = pairs[module.as_str()];
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (a, _) => {
                let which = if a.is_none() { "lora_A" } else { "lora_B" };
                return Err(lora_err(
                    &format!("{prefix}{module}.{which}.weight"),
                    "present (every target needs both factors)",
                    "missing",
                ));
            }
        };
        if a.shape.first() != Some(&spec.rank) || b.shape.get(1) != Some(&spec.rank) {
            return Err(lora_err(
                &format!("{prefix}{module}.lora_A.weight"),
                format!("rank {} (lora_A [rank, in], lora_B [out, rank])", spec.rank),
                format!(
                    "lora_A {}, lora_B {}",
                    fmt_shape(&a.shape),
                    fmt_shape(&b.shape)
                ),
            ));
        }
        let wname = format!("{module}.weight");
        let w = base
            .get(&wname)
            .ok_or_else(|| lora_err(&wname, "present in the base weights", "missing"))?;
        if w.shape.len() != 2
            || a.shape != [spec.rank, w.shape[1]]
            || b.shape != [w.shape[0], spec.rank]
        {
            return Err(lora_err(
                &format!("{prefix}{module}"),
                format!("factors matching the base weight {}", fmt_shape(&w.shape)),
                format!(
                    "lora_A {}, lora_B {}",
                    fmt_shape(&a.shape),
                    fmt_shape(&b.shape)
                ),
            ));
        }
        plan.push((module, wname, a, b));
    }
    let mut merged = Vec::with_capacity(plan.len());
    for (module, wname, a, b) in plan {
        let w = base
            .get_mut(&wname)
            .ok_or_else(|| lora_err(&wname, "present in the base weights", "missing"))?;
        merge_one(module, w, a, b, spec.rank, spec.scale())?;
        merged.push(module.clone());
    }
    Ok(MergeReport { merged })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], seed: u32) -> Tensor {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|i| crate::rng::init_value(7, seed, i as u64, 0.0, 1.0))
            .collect();
        Tensor::new(shape.to_vec(), data).unwrap()
    }

    /// `W + s * B @ A` written out per element, in f64.
    fn expected(w: &Tensor, a: &Tensor, b: &Tensor, s: f64) -> Vec<f64> {
        let (out, inp, r) = (w.shape[0], w.shape[1], a.shape[0]);
        let mut v = Vec::new();
        for o in 0..out {
            for i in 0..inp {
                let d: f64 = (0..r)
                    .map(|k| f64::from(b.data[o * r + k]) * f64::from(a.data[k * inp + i]))
                    .sum();
                v.push(f64::from(w.data[o * inp + i]) + s * d);
            }
        }
        v
    }

    fn setup(depth: usize, rank: usize) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
        let (mut base, mut lora) = (BTreeMap::new(), BTreeMap::new());
        for (k, m) in wan_lora_targets(depth).iter().enumerate() {
            let (out, inp) = if m.ends_with("ffn.0") {
                (12, 8)
            } else if m.ends_with("ffn.2") {
                (8, 12)
            } else {
                (8, 8)
            };
            let k = k as u32 * 3;
            base.insert(format!("{m}.weight"), t(&[out, inp], k));
            lora.insert(
                format!("{PEFT_PREFIX}{m}.lora_A.weight"),
                t(&[rank, inp], k + 1),
            );
            lora.insert(
                format!("{PEFT_PREFIX}{m}.lora_B.weight"),
                t(&[out, rank], k + 2),
            );
        }
        base.insert("head.head.weight".into(), t(&[4, 8], 999));
        (base, lora)
    }

    #[test]
    fn merge_adds_the_scaled_product_to_every_target() {
        let (mut base, lora) = setup(2, 3);
        let before = base.clone();
        let spec = LoraSpec {
            rank: 3,
            alpha: 6.0,
        };
        let targets = wan_lora_targets(2);
        assert_eq!(targets.len(), 20);
        let rep = merge(&mut base, &lora, PEFT_PREFIX, &spec, &targets).unwrap();
        assert_eq!(rep.merged, targets);
        for m in &targets {
            let w = &before[&format!("{m}.weight")];
            let a = &lora[&format!("{PEFT_PREFIX}{m}.lora_A.weight")];
            let b = &lora[&format!("{PEFT_PREFIX}{m}.lora_B.weight")];
            let want = expected(w, a, b, 2.0);
            let got = &base[&format!("{m}.weight")].data;
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (f64::from(*g) - e).abs() <= 1e-6 * (1.0 + e.abs()),
                    "{m}: {g} vs {e}"
                );
            }
            assert_ne!(got, &w.data, "{m} unchanged");
        }
        assert_eq!(
            base["head.head.weight"], before["head.head.weight"],
            "non-targets untouched"
        );
    }

    #[test]
    fn mismatches_are_named_errors_and_leave_the_base_unchanged() {
        let spec = LoraSpec {
            rank: 3,
            alpha: 3.0,
        };
        let targets = wan_lora_targets(2);
        let check = |lora: &BTreeMap<String, Tensor>, spec: &LoraSpec, needle: &str| {
            let (mut base, _) = setup(2, 3);
            let before = base.clone();
            let e = merge(&mut base, lora, PEFT_PREFIX, spec, &targets)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "`{e}` should name `{needle}`");
            assert_eq!(base, before, "a failed merge changed the base");
        };
        let (_, lora) = setup(2, 3);
        // Wrong rank in the spec; wrong rank in one file tensor.
        check(
            &lora,
            &LoraSpec {
                rank: 4,
                alpha: 4.0,
            },
            "rank 4",
        );
        let mut l = lora.clone();
        l.insert(
            format!("{PEFT_PREFIX}blocks.1.ffn.2.lora_A.weight"),
            t(&[2, 12], 5),
        );
        check(&l, &spec, "blocks.1.ffn.2.lora_A.weight");
        // A factor of a module that is not a target; a target with a factor missing.
        let mut l = lora.clone();
        l.insert(
            format!("{PEFT_PREFIX}head.head.lora_A.weight"),
            t(&[3, 8], 5),
        );
        check(&l, &spec, "head.head");
        let mut l = lora.clone();
        l.remove(&format!("{PEFT_PREFIX}blocks.0.cross_attn.v.lora_B.weight"));
        check(&l, &spec, "blocks.0.cross_attn.v.lora_B.weight");
        // Factors of the right rank whose other side does not match the base weight.
        let mut l = lora.clone();
        l.insert(
            format!("{PEFT_PREFIX}blocks.0.ffn.0.lora_A.weight"),
            t(&[3, 9], 5),
        );
        check(&l, &spec, "blocks.0.ffn.0");
        // Names without the prefix, and tensors that are not LoRA factors.
        let mut l = lora.clone();
        l.insert("blocks.0.self_attn.q.lora_A.weight".into(), t(&[3, 8], 5));
        check(&l, &spec, "base_model.model.");
        let mut l = lora.clone();
        l.insert(
            format!("{PEFT_PREFIX}blocks.0.self_attn.q.lora_magnitude_vector"),
            t(&[8], 5),
        );
        check(&l, &spec, "lora_magnitude_vector");
    }

    #[test]
    fn merge_one_checks_its_shapes() {
        let mut w = t(&[4, 5], 1);
        assert!(merge_one("m", &mut w, &t(&[2, 5], 2), &t(&[4, 3], 3), 2, 1.0).is_err());
        assert!(merge_one("m", &mut w, &t(&[2, 4], 2), &t(&[4, 2], 3), 2, 1.0).is_err());
        let mut v = t(&[4], 1);
        assert!(merge_one("m", &mut v, &t(&[2, 4], 2), &t(&[4, 2], 3), 2, 1.0).is_err());
    }
}
