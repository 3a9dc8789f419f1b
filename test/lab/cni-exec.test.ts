// The CNI lab tests again with ctnetd on the exec backend (ip, nft processes): cni.test.ts runs
// ctnetd's default, the in-process netlink backend, and both must pass the same tests. The switch
// is ctnetd's environment (CTNET_KERNEL=exec), which the lab's ctnet, its CNI plugin and the ctnetd
// they start inherit from this process.
process.env.CTNET_KERNEL = 'exec';
await import('./cni.test.ts');
