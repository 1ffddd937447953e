//! Floats in JSON that survive NaN and infinities. `serde_json` writes a non-finite `f64` as
//! `null` and then refuses to read it back; these forms write NaN, `+inf` and `-inf` as the
//! strings `"NaN"`, `"inf"` and `"-inf"`, every other value as a JSON number, and read back
//! either form (and `null` as NaN, which is how earlier versions stored it).
//!
//! Use with `#[serde(with = "float_json::any")]` on an `f64` and
//! `#[serde(with = "float_json::option")]` on an `Option<f64>`.
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

/// The JSON form of `value`: a number when finite, else a string.
fn write<S: Serializer>(value: f64, s: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        s.serialize_f64(value)
    } else if value.is_nan() {
        s.serialize_str("NaN")
    } else if value > 0.0 {
        s.serialize_str("inf")
    } else {
        s.serialize_str("-inf")
    }
}

struct AnyFloat;

impl Visitor<'_> for AnyFloat {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number, or \"NaN\", \"inf\" or \"-inf\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
}

/// An `f64` of any value.
pub(crate) mod any {
    use super::*;

    /// Writes `value` (see the module).
    pub(crate) fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        write(*value, s)
    }

    /// Reads a number, `"NaN"`, `"inf"`, `"-inf"` or `null` (NaN).
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(AnyFloat)
    }
}

/// An `Option<f64>`: `None` is `null`, `Some` of any value as [`any`].
pub(crate) mod option {
    use super::*;

    /// Writes `null` or the value (see the module).
    pub(crate) fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => write(*v, s),
            None => s.serialize_none(),
        }
    }

    /// Reads `null` as `None`, else as [`any`].
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::any")] f64);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct Row {
        #[serde(with = "super::any")]
        x: f64,
        #[serde(with = "super::option")]
        y: Option<f64>,
    }

    fn round_trip(x: f64, y: Option<f64>) -> (String, Row) {
        let json = serde_json::to_string(&Row { x, y }).unwrap();
        let back = serde_json::from_str(&json).unwrap();
        (json, back)
    }

    #[test]
    fn every_value_round_trips() {
        for x in [0.0, -1.5, 1e300, f64::INFINITY, f64::NEG_INFINITY] {
            for y in [
                None,
                Some(2.5),
                Some(f64::INFINITY),
                Some(f64::NEG_INFINITY),
            ] {
                let (json, back) = round_trip(x, y);
                assert_eq!((back.x, back.y), (x, y), "{json}");
            }
        }
        let (json, back) = round_trip(f64::NAN, Some(f64::NAN));
        assert_eq!(json, r#"{"x":"NaN","y":"NaN"}"#);
        assert!(back.x.is_nan() && back.y.is_some_and(f64::is_nan));
        assert_eq!(round_trip(1.0, None).0, r#"{"x":1.0,"y":null}"#);
    }

    #[test]
    fn finite_values_come_back_as_the_very_same_bits() {
        // A loss sum that serde_json's default float parser read back one ulp off, which made
        // a resumed run's metrics differ from an uninterrupted run's in the last digit.
        let seen = 2.2381702661514282_f64;
        assert_eq!(round_trip(seen, Some(seen)).1.x.to_bits(), seen.to_bits());
        // And many others: every exponent, varied mantissas (a fixed LCG, no randomness).
        let mut bits = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..20_000 {
            bits = bits
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let x = f64::from_bits(bits);
            if !x.is_finite() {
                continue;
            }
            let (json, back) = round_trip(x, Some(x));
            assert_eq!(back.x.to_bits(), x.to_bits(), "{json}");
            assert_eq!(back.y.map(f64::to_bits), Some(x.to_bits()), "{json}");
        }
    }

    #[test]
    fn null_reads_as_nan_and_other_strings_are_refused() {
        let row: Row = serde_json::from_str(r#"{"x":null,"y":null}"#).unwrap();
        assert!(row.x.is_nan() && row.y.is_none());
        let err = serde_json::from_str::<Row>(r#"{"x":"nan","y":null}"#).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
    }
}
