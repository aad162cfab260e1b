//! Launch geometry and the one launch macro. The elementwise, reduction, attention and training
//! kernels run `THREADS` threads per block (BLOCK_THREADS of kernels/codes.cuh, which
//! ATT_THREADS and TRAIN_THREADS are); the persistent kernel sizes its own blocks.

use cudarc::driver::LaunchConfig;

pub(crate) const THREADS: u32 = super::kernels::codes::BLOCK_THREADS as u32;

/// A grid dimension of `count`. Launchers check their sizes against the kernels' i32 indices
/// first; a count past u32 anyway becomes u32::MAX, which the driver refuses with an error,
/// rather than a wrapped count that would leave elements unwritten.
fn dim(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// One thread per element of `n`.
pub(crate) fn per_element(n: usize) -> LaunchConfig {
    blocks(n.div_ceil(THREADS as usize))
}

/// `count` blocks (a grid-stride or one-block-per-chunk kernel).
pub(crate) fn blocks(count: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (dim(count), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The most blocks of a grid-stride launch; past that its threads loop.
pub(crate) const GRID_STRIDE_BLOCKS: usize = 1 << 16;

/// A grid-stride launch over `n` elements (kernels with 64-bit `GRID_STRIDE_LOOP` indices):
/// one thread per element up to `GRID_STRIDE_BLOCKS` blocks, so any `n` fits.
pub(crate) fn grid_stride(n: usize) -> LaunchConfig {
    blocks(n.div_ceil(THREADS as usize).clamp(1, GRID_STRIDE_BLOCKS))
}

/// `splits` blocks per row of `rows`, each with `shared_bytes` of dynamic shared memory.
pub(crate) fn per_row(rows: usize, splits: usize, shared_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (dim(rows), dim(splits), 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: dim(shared_bytes),
    }
}

/// Launches kernel `$f` with `$cfg` on `$stream`. Arguments must be places (the builder
/// borrows them until the launch). Every call site is in an `unsafe` block of its own (inside
/// an `unsafe fn` too: the crate denies `unsafe_op_in_unsafe_fn`) with a `SAFETY:` line saying
/// why the addresses and sizes are valid, or which `# Safety` contract of its function does.
macro_rules! launch {
    ($stream:expr, $f:expr, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        let mut builder = $stream.launch_builder($f);
        $( builder.arg(&$arg); )+
        builder.launch($cfg)?;
    }};
}
pub(crate) use launch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_every_element_and_never_wrap() {
        for n in [1, 255, 256, 257, 1 << 20] {
            let g = per_element(n).grid_dim.0 as usize;
            assert!(
                g * THREADS as usize >= n && (g - 1) * (THREADS as usize) < n,
                "{n}"
            );
        }
        // 2^32 + 1 elements wrap to 1 in u32; the grid must not shrink to match.
        let huge = per_element((1usize << 32) * THREADS as usize + 1);
        assert_eq!(huge.grid_dim.0, u32::MAX);
        assert_eq!(per_row(usize::MAX, 2, 0).grid_dim, (u32::MAX, 2, 1));
    }
}
