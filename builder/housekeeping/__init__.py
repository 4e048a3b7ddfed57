"""Clean-up of what builds leave behind: `gc` finds (and with --yes removes) the domains,
work directories and stale locks of builds whose process died, `salvage` keeps the
failed manifest such a build would have written, and `prune` keeps the N newest good
builds of each template in an output directory (`azbuild prune`). The stage cache's own
pruning is `builder.cache.prune`."""
