//! The shapes and sizes the sweep is built from, the tensors made of them, and how the report
//! writes them.

use crate::common;
use fused_rnn::Tensor;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The dimensions every small shape is built from.
pub(crate) const DIMS: [usize; 3] = [0, 1, 3];
/// A dimension no buffer can have: 2^40 elements.
pub(crate) const HUGE: usize = 1 << 40;
pub(crate) const MAX: usize = usize::MAX;

/// A size as the report shows it: huge powers of two and usize::MAX by name.
pub(crate) fn num(d: usize) -> String {
    match d {
        MAX => "MAX".into(),
        d if d >= 1 << 32 && d.is_power_of_two() => format!("2^{}", d.trailing_zeros()),
        d => d.to_string(),
    }
}

pub(crate) fn dims(shape: &[usize]) -> String {
    let names: Vec<String> = shape.iter().map(|&d| num(d)).collect();
    format!("[{}]", names.join(", "))
}

pub(crate) fn opt_dims(t: Option<&Tensor>) -> String {
    t.map_or("None".into(), |t| dims(t.shape()))
}

pub(crate) fn list(shapes: &[Vec<usize>]) -> String {
    let names: Vec<String> = shapes.iter().map(|s| dims(s)).collect();
    format!("[{}]", names.join(", "))
}

/// Every shape of rank 0 to 4 over `DIMS`, then zero-element shapes with huge dimensions.
pub(crate) fn shapes() -> &'static [Vec<usize>] {
    static SHAPES: OnceLock<Vec<Vec<usize>>> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let mut all = vec![vec![]];
        let mut rank = vec![vec![]];
        for _ in 0..4 {
            rank = rank
                .iter()
                .flat_map(|s: &Vec<usize>| DIMS.iter().map(move |&d| [s.as_slice(), &[d]].concat()))
                .collect();
            all.extend(rank.iter().cloned());
        }
        all.extend([
            vec![HUGE, 0],
            vec![0, HUGE],
            vec![HUGE, 0, 5],
            vec![0, HUGE, 1],
            vec![1, 0, HUGE],
            vec![3, HUGE, 0],
            vec![0, HUGE, HUGE],
            vec![HUGE, 0, 1, 3],
            vec![0, MAX],
            vec![1, 3, 0, HUGE],
        ]);
        all
    })
}

/// Every sweep shape, then the near misses of `valid` that are not among them: `valid`, each
/// dimension one more and one less, one more leading axis and one fewer.
pub(crate) fn around(valid: &[usize]) -> Vec<Vec<usize>> {
    let mut near = vec![valid.to_vec(), [&[1], valid].concat()];
    if let Some((_, rest)) = valid.split_first() {
        near.push(rest.to_vec());
    }
    for axis in 0..valid.len() {
        for delta in [1isize, -1] {
            let mut s = valid.to_vec();
            if let Some(d) = s[axis].checked_add_signed(delta) {
                s[axis] = d;
                near.push(s);
            }
        }
    }
    let mut all = shapes().to_vec();
    for s in near {
        if !all.contains(&s) {
            all.push(s);
        }
    }
    all
}

/// The element count of `shape` when it is small enough to make a tensor of in this test.
fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= 1 << 16)
}

pub(crate) fn small(shape: &[usize]) -> bool {
    elements(shape).is_some()
}

/// A host f32 tensor of `shape` with random non-zero values (seeded by the shape).
pub(crate) fn tensor(shape: &[usize]) -> Tensor {
    let n = elements(shape).unwrap_or_else(|| panic!("sweep shapes stay small: {shape:?}"));
    let seed = shape
        .iter()
        .fold(n as u64, |h, &d| h.wrapping_mul(31) ^ d as u64);
    Tensor::from_vec(common::random(n, 1.0, seed), shape).unwrap()
}

pub(crate) fn tensors(shapes: &[Vec<usize>]) -> Vec<Tensor> {
    shapes.iter().map(|s| tensor(s)).collect()
}

/// The tensor of `shape`, made once per process and shared (the sweep reads the same shapes
/// many times).
pub(crate) fn shared(shape: &[usize]) -> &'static Tensor {
    static MADE: OnceLock<Mutex<HashMap<Vec<usize>, &'static Tensor>>> = OnceLock::new();
    let mut made = MADE.get_or_init(Default::default).lock().unwrap();
    made.entry(shape.to_vec())
        .or_insert_with(|| Box::leak(Box::new(tensor(shape))))
}

/// The shared tensors of `around(valid)`.
pub(crate) fn tensors_around(valid: &[usize]) -> Vec<&'static Tensor> {
    around(valid).iter().map(|s| shared(s)).collect()
}

/// Lengths around a valid call of `batch` rows of `len` steps (or keys), and none.
pub(crate) fn length_variants(len: usize, batch: usize) -> Vec<Option<Vec<usize>>> {
    let mixed = (0..batch)
        .map(|r| [1, len, len.div_ceil(2)][r % 3])
        .collect();
    let mut out = vec![None, Some(mixed), Some(vec![])];
    for (value, rows) in [(len, batch + 1), (0, batch), (len + 1, batch), (MAX, batch)] {
        out.push(Some(vec![value; rows]));
    }
    out
}

/// Lengths, a bias shape or tokens when given.
pub(crate) fn maybe(values: Option<&[usize]>) -> String {
    values.map_or("None".into(), dims)
}

/// Every (a, b) over `values`.
pub(crate) fn pairs(values: &[usize]) -> Vec<(usize, usize)> {
    let v = values;
    v.iter()
        .flat_map(|&a| v.iter().map(move |&b| (a, b)))
        .collect()
}

/// Every (a, b, c) over `values`.
pub(crate) fn cube(values: &[usize]) -> Vec<(usize, usize, usize)> {
    let v = values;
    pairs(v)
        .into_iter()
        .flat_map(|(a, b)| v.iter().map(move |&c| (a, b, c)))
        .collect()
}
