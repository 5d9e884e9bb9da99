// Empty library so the agent can name this crate as a build dependency; the programs are the bin.
#![no_std]
