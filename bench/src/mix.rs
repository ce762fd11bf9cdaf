//! The mix of a load run (`--mix happy=80,no-stock=10,no-funds=10`): how its orders are
//! split between the three outcomes. Parsed by clap, used by `saga-bench load` and `bench`.

/// How the orders of a run are split between the three outcomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Mix {
    pub happy: u32,
    pub no_stock: u32,
    pub no_funds: u32,
}

impl Mix {
    /// `happy=80,no-stock=10,no-funds=10` (weights; missing kinds weigh 0).
    pub(crate) fn parse(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            happy: 0,
            no_stock: 0,
            no_funds: 0,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KIND=WEIGHT (e.g. happy=80)"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("weight {v:?} is not a whole number"))?;
            match k.trim() {
                "happy" => mix.happy = v,
                "no-stock" => mix.no_stock = v,
                "no-funds" => mix.no_funds = v,
                other => {
                    return Err(format!(
                        "unknown kind {other:?}: use happy, no-stock or no-funds"
                    ));
                }
            }
        }
        if mix.happy + mix.no_stock + mix.no_funds == 0 {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(mix)
    }

    pub(crate) fn pick(&self, roll: u32) -> Kind {
        let total = self.happy + self.no_stock + self.no_funds;
        let r = roll % total;
        if r < self.happy {
            Kind::Happy
        } else if r < self.happy + self.no_stock {
            Kind::NoStock
        } else {
            Kind::NoFunds
        }
    }
}

/// The outcome an order of the run is made for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Happy,
    NoStock,
    NoFunds,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_parses_and_splits_by_weight() {
        let m = Mix::parse("happy=2,no-stock=1,no-funds=1").unwrap();
        assert!(matches!(m.pick(0), Kind::Happy));
        assert!(matches!(m.pick(1), Kind::Happy));
        assert!(matches!(m.pick(2), Kind::NoStock));
        assert!(matches!(m.pick(3), Kind::NoFunds));
        assert!(Mix::parse("happy=0").is_err());
        assert!(Mix::parse("sad=1").unwrap_err().contains("unknown kind"));
        assert!(Mix::parse("happy").unwrap_err().contains("KIND=WEIGHT"));
    }
}
