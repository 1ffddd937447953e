//! Draws from the Gamma and Beta distributions with a [`rand::Rng`] (the crate keeps rand 0.8
//! without `rand_distr`): Marsaglia and Tsang's method for Gamma, Beta as `X / (X + Y)`.
use rand::Rng;

/// A standard normal draw (Box–Muller, one of the pair).
fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // 1 - u is in (0, 1], so its logarithm is finite.
    let u1 = 1.0 - rng.gen::<f64>();
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(`shape`, 1) draw, `shape > 0` (Marsaglia and Tsang, 2000; shapes below 1 through
/// `Gamma(shape + 1) * U^(1 / shape)`).
pub(crate) fn gamma<R: Rng + ?Sized>(rng: &mut R, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.gen::<f64>();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = 1.0 - rng.gen::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A Beta(`a`, `b`) draw, `a, b > 0`, in `[0, 1]`.
pub(crate) fn beta<R: Rng + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    if x + y > 0.0 {
        x / (x + y)
    } else {
        // Both underflowed (tiny shapes): the Beta is then concentrated at 0 and 1.
        if rng.gen_bool(a / (a + b)) {
            1.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Mean and variance of Beta(a, a) over 200 000 draws, against a / (a + a) = 1/2 and
    /// 1 / (4 (2a + 1)); the bounds are over 6 standard errors (false failure below 1e-8, and
    /// the seed is fixed, so the test is deterministic).
    #[test]
    fn beta_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for a in [0.2, 1.0, 2.5] {
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| beta(&mut rng, a, a)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let want_var = 1.0 / (4.0 * (2.0 * a + 1.0));
            let se_mean = (want_var / n as f64).sqrt();
            assert!((mean - 0.5).abs() < 6.0 * se_mean, "a {a}: mean {mean}");
            // The variance of a [0, 1] variable's squared deviation is at most 1/16.
            assert!(
                (var - want_var).abs() < 6.0 * (0.0625 / n as f64).sqrt(),
                "a {a}: var {var}"
            );
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        }
    }
}
