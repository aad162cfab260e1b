//! Kernel launches of the recurrent CUDA paths: one thread per element, 256 per block.

use cudarc::driver::LaunchConfig;

const BLOCK: u32 = 256;

pub(super) fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(BLOCK), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches kernel `$f` on `$lane`'s stream over `$n` threads. Arguments must be places (the
/// builder borrows them until the launch). Callers are `unsafe fn`s whose contracts make the
/// addresses valid.
macro_rules! launch {
    ($lane:expr, $f:expr, $n:expr; $($arg:expr),+ $(,)?) => {{
        let mut builder = $lane.stream.launch_builder($f);
        $( builder.arg(&$arg); )+
        builder.launch($crate::ops::recurrent::launch::grid($n))?;
    }};
}
