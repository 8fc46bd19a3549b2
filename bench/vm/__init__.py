"""Parts of the `kvm` tier: the guest build, domain XML, the guest agent, acceleration, clocks."""
