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
