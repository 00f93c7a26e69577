//! Sum of one f32 per unit over a whole cube.

use cubecl::prelude::*;

/// Sums `value` over every unit of the cube; every unit gets the total. Every unit of the cube
/// must call it (it synchronises the cube). `shared` must hold at least `CUBE_DIM` values.
///
/// With `use_plane`, each plane reduces with `plane_sum` and the planes' partial sums meet in
/// shared memory; without, a shared-memory tree reduction (`CUBE_DIM` a power of two).
#[cube]
pub(crate) fn cube_sum(value: f32, shared: &mut SharedMemory<f32>, #[comptime] use_plane: bool) -> f32 {
    let mut total = 0.0f32;
    if use_plane {
        let partial = plane_sum(value);
        if UNIT_POS_PLANE == 0 {
            shared[PLANE_POS as usize] = partial;
        }
        sync_cube();
        let planes = (CUBE_DIM / PLANE_DIM) as usize;
        for p in 0..planes {
            total += shared[p];
        }
    } else {
        shared[UNIT_POS as usize] = value;
        sync_cube();
        let mut stride = CUBE_DIM / 2;
        while stride > 0 {
            if UNIT_POS < stride {
                let other = shared[(UNIT_POS + stride) as usize];
                shared[UNIT_POS as usize] += other;
            }
            sync_cube();
            stride /= 2;
        }
        total = shared[0];
    }
    total
}

/// Maximum of `value` over every unit of the cube; every unit gets it. Same contract as
/// [`cube_sum`] (every unit calls it; `shared` holds at least `CUBE_DIM` values).
#[cube]
pub(crate) fn cube_max(value: f32, shared: &mut SharedMemory<f32>, #[comptime] use_plane: bool) -> f32 {
    if use_plane {
        let partial = plane_max(value);
        if UNIT_POS_PLANE == 0 {
            shared[PLANE_POS as usize] = partial;
        }
        sync_cube();
        let mut best = shared[0];
        let planes = (CUBE_DIM / PLANE_DIM) as usize;
        for p in 1..planes {
            best = max(best, shared[p]);
        }
        best
    } else {
        shared[UNIT_POS as usize] = value;
        sync_cube();
        let mut stride = CUBE_DIM / 2;
        while stride > 0 {
            if UNIT_POS < stride {
                let other = shared[(UNIT_POS + stride) as usize];
                shared[UNIT_POS as usize] = max(shared[UNIT_POS as usize], other);
            }
            sync_cube();
            stride /= 2;
        }
        shared[0]
    }
}

/// A zeroed local accumulator of `len` values.
#[cube]
pub(crate) fn zeros(#[comptime] len: usize) -> Array<f32> {
    let mut acc = Array::<f32>::new(len);
    #[unroll]
    for i in 0..len {
        acc[i] = 0.0f32;
    }
    acc
}

/// Sums each of the first `rows` values of `acc` over every unit of the cube, in place: after
/// it every unit's `acc[r]` is the cube's total of row `r`. Same contract as [`cube_sum`]
/// (every unit calls it); `shared` holds at least `rows · CUBE_DIM` values. With
/// `single_plane` (the cube is one plane and plane ops are on) no shared memory is touched.
#[cube]
pub(crate) fn cube_sum_rows(
    acc: &mut Array<f32>,
    shared: &mut SharedMemory<f32>,
    #[comptime] rows: usize,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
) {
    if single_plane {
        #[unroll]
        for r in 0..rows {
            acc[r] = plane_sum(acc[r]);
        }
    } else if use_plane {
        let planes = (CUBE_DIM / PLANE_DIM) as usize;
        #[unroll]
        for r in 0..rows {
            let partial = plane_sum(acc[r]);
            if UNIT_POS_PLANE == 0 {
                shared[r * planes + PLANE_POS as usize] = partial;
            }
        }
        sync_cube();
        #[unroll]
        for r in 0..rows {
            let mut total = 0.0f32;
            for p in 0..planes {
                total += shared[r * planes + p];
            }
            acc[r] = total;
        }
    } else {
        let dim = CUBE_DIM as usize;
        #[unroll]
        for r in 0..rows {
            shared[r * dim + UNIT_POS as usize] = acc[r];
        }
        sync_cube();
        let mut stride = CUBE_DIM / 2;
        while stride > 0 {
            if UNIT_POS < stride {
                #[unroll]
                for r in 0..rows {
                    let other = shared[r * dim + (UNIT_POS + stride) as usize];
                    shared[r * dim + UNIT_POS as usize] += other;
                }
            }
            sync_cube();
            stride /= 2;
        }
        #[unroll]
        for r in 0..rows {
            acc[r] = shared[r * dim];
        }
    }
}

/// Reads every 16-byte vector of `data` once (a grid-stride loop, eight independent loads in
/// flight per unit) and writes one word per cube, so that no load can be dropped.
#[cube(launch_unchecked)]
fn read_probe_kernel<N: Size>(data: &Array<Vector<u32, N>>, out: &mut Array<u32>, #[comptime] cube_dim: usize) {
    let n = data.len();
    let stride = CUBE_COUNT * cube_dim;
    let mut v = ABSOLUTE_POS;
    let mut acc = Vector::<u32, N>::empty().fill(0u32);
    while v + 7 * stride < n {
        let a = (data[v] ^ data[v + stride]) ^ (data[v + 2 * stride] ^ data[v + 3 * stride]);
        let b = (data[v + 4 * stride] ^ data[v + 5 * stride]) ^ (data[v + 6 * stride] ^ data[v + 7 * stride]);
        acc ^= a ^ b;
        v += 8 * stride;
    }
    while v < n {
        acc ^= data[v];
        v += stride;
    }
    let mut x = 0u32;
    #[unroll]
    for i in 0..4usize {
        x ^= acc[i];
    }
    let mut shared = SharedMemory::<u32>::new(cube_dim);
    shared[UNIT_POS as usize] = x;
    sync_cube();
    if UNIT_POS == 0 {
        let mut total = 0u32;
        for i in 0..cube_dim {
            total ^= shared[i];
        }
        out[CUBE_POS] = total;
    }
}

/// The device's read bandwidth in bytes/s, measured now: the best of `passes` measurements,
/// each eight back-to-back reads of a `bytes`-byte buffer (at most the device's largest
/// allocation, rounded down to whole 16-byte vectors) and one read-back of the result, after
/// 0.2 s of warm-up passes, by a streaming kernel that only loads (no stores but one word per
/// cube).
/// `None` when the device could not run it.
/// The yardstick for `hearth bench`'s floor on cubecl devices: a matrix × vector product
/// reads its weights and writes almost nothing.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// let bw = hearth_backend::cube::read_bandwidth::<burn::backend::wgpu::WgpuRuntime>(&Default::default(), 1 << 26, 3);
/// assert!(bw.unwrap() > 0.0);
/// # }
/// ```
pub fn read_bandwidth<R: burn_cubecl::CubeRuntime>(device: &R::Device, bytes: usize, passes: usize) -> Option<f64> {
    use cubecl::server::Handle;
    let client = R::client(device);
    // at most one allocation's worth (wgpu caps buffer sizes)
    let bytes = bytes.min(client.properties().memory.max_page_size as usize);
    let vectors = (bytes / 16).max(1);
    let data: Handle = client.empty(vectors * 16);
    // enough cubes to fill any current GPU several times over, few enough to reduce cheaply
    let cube_dim = 256usize;
    let cubes = 4096usize.min(vectors.div_ceil(cube_dim)).max(1);
    let out: Handle = client.empty(cubes * 4);
    let launch = || {
        // SAFETY: `data` holds `vectors` 16-byte vectors and the kernel reads only below its
        // length; `out` holds one u32 per cube, written by unit 0 of each cube at CUBE_POS.
        unsafe {
            read_probe_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(cubes as u32, 1, 1),
                CubeDim::new_1d(cube_dim as u32),
                4,
                // array lengths are in scalars (the kernel sees `len / 4` vectors)
                ArrayArg::from_raw_parts(data.clone(), vectors * 4),
                ArrayArg::from_raw_parts(out.clone(), cubes),
                cube_dim,
            );
        }
    };
    let sync = || std::hint::black_box(client.read_one(out.clone())).is_ok();
    // compile the kernel, touch the buffer, and keep the device busy for a fifth of a second
    // first: a GPU idling between short bursts runs at lower clocks and under-reads
    let warm = std::time::Instant::now();
    while warm.elapsed().as_secs_f64() < 0.2 {
        launch();
        if !sync() {
            return None;
        }
    }
    // each measurement is REPS reads queued back to back and one read-back, so the host's
    // launch and synchronisation cost (tens of µs against a fraction of a millisecond per read
    // of a GPU's buffer) is paid once per REPS reads, not once per read
    const REPS: usize = 8;
    let mut best = 0.0f64;
    for _ in 0..passes.max(1) {
        let t0 = std::time::Instant::now();
        for _ in 0..REPS {
            launch();
        }
        if !sync() {
            return None;
        }
        best = best.max((REPS * vectors * 16) as f64 / t0.elapsed().as_secs_f64());
    }
    Some(best)
}
