//! Choosing the vMTA for a received message.
//!
//! Order: the `X-Virtual-MTA` header (when the source may use it), the
//! authenticated user's `default_vmta`, the source's `default_vmta`, the
//! configuration's default. A pool name resolves to one member by smooth
//! weighted round-robin (each member gets its weight's share, interleaved
//! rather than in runs), per shard; the choice is stored with the message so
//! retries keep it.

use std::collections::HashMap;

use crate::config::{Config, TargetRef};

/// Smooth weighted round-robin state of every pool, owned by one shard.
#[derive(Debug, Default)]
pub struct PoolPicker {
    current: HashMap<String, Vec<i64>>,
}

/// The chosen destination of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The name the message was submitted to (a vMTA or a pool).
    pub vmta_or_pool: String,
    /// The vMTA that will send it.
    pub vmta: String,
}

impl PoolPicker {
    /// Resolves `name` to a vMTA; `None` when no vMTA or pool has that name.
    pub fn resolve(&mut self, config: &Config, name: &str) -> Option<Choice> {
        match config.target(name)? {
            TargetRef::Vmta(v) => Some(Choice {
                vmta_or_pool: name.to_string(),
                vmta: v.name.clone(),
            }),
            TargetRef::Pool(pool) => {
                if pool.vmtas.is_empty() {
                    return None;
                }
                let current = self
                    .current
                    .entry(pool.name.clone())
                    .or_insert_with(|| vec![0; pool.vmtas.len()]);
                if current.len() != pool.vmtas.len() {
                    *current = vec![0; pool.vmtas.len()];
                }
                let total: i64 = pool.weights.iter().map(|w| i64::from(*w)).sum();
                let mut best = 0;
                for (i, w) in pool.weights.iter().enumerate() {
                    current[i] += i64::from(*w);
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                Some(Choice {
                    vmta_or_pool: pool.name.clone(),
                    vmta: pool.vmtas[best].clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::load_str(
            "t.toml",
            r#"
            [vmta.ip1]
            source_ip = "127.0.0.1"
            [vmta.ip2]
            source_ip = "127.0.0.2"
            [pool.news]
            vmtas = ["ip1", "ip2"]
            weights = [3, 1]
            "#,
            None,
        )
        .expect("valid config")
    }

    #[test]
    fn pool_follows_weights_interleaved() {
        let c = config();
        let mut p = PoolPicker::default();
        let picks: Vec<String> = (0..8)
            .map(|_| p.resolve(&c, "news").unwrap().vmta)
            .collect();
        assert_eq!(picks.iter().filter(|v| *v == "ip1").count(), 6);
        assert_eq!(picks.iter().filter(|v| *v == "ip2").count(), 2);
        // Smooth: ip2 never waits more than 4 picks.
        assert_eq!(&picks[..4].iter().filter(|v| *v == "ip2").count(), &1);
        assert_eq!(p.resolve(&c, "ip2").unwrap().vmta, "ip2");
        assert_eq!(p.resolve(&c, "news").unwrap().vmta_or_pool, "news");
        assert!(p.resolve(&c, "nope").is_none());
    }
}
