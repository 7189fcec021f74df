//! Scheduling invocations across nodes without a central queue.
//!
//! Every node owns a queue of invocations that have not started. A node with a free slot and an
//! empty queue probes `d` peers chosen at random and steals from the most loaded one up to half of
//! its queue (power of d choices, as in Sparrow; late binding, since only queued work moves).
//!
//! [`policy`] is that decision as pure functions: no I/O, no clock, no randomness of its own (the
//! caller passes an RNG). The server, the simulator ([`sim`], behind the `ignition-sim` binary) and
//! the property tests all call the same code.

pub mod policy;
pub mod sim;
