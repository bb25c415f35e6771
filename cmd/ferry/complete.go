package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// addCompletions lets the shell complete guest names where a command takes
// NAME, host names where it takes HOST (and for --to and --host), from the
// cluster itself (`ferry completion bash|zsh|fish` writes the script).
func addCompletions(g *globals, root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		words := strings.Fields(c.Use)
		switch {
		case len(words) > 1 && words[1] == "NAME" && c.Parent() != nil && (c.Parent().Name() == "vm" || c.Name() == "migrate"):
			c.ValidArgsFunction = onlyFirst(g.vmNames)
		case len(words) > 1 && (words[1] == "HOST" || words[1] == "FROM"):
			c.ValidArgsFunction = g.hostNames
		}
		for _, flag := range []string{"to", "host"} {
			if c.Flags().Lookup(flag) != nil {
				c.RegisterFlagCompletionFunc(flag, g.hostNames)
			}
		}
		if c.Flags().Lookup("vm") != nil {
			c.RegisterFlagCompletionFunc("vm", g.vmNames)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

type completer = func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective)

// onlyFirst completes the first argument only.
func onlyFirst(f completer) completer {
	return func(c *cobra.Command, args []string, to string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return f(c, args, to)
	}
}

// vmNames are the cluster's guests that start with what was typed.
func (g *globals) vmNames(_ *cobra.Command, _ []string, typed string) ([]string, cobra.ShellCompDirective) {
	cl, err := g.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	vms, err := cl.ListVMs(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, vm := range vms {
		if strings.HasPrefix(vm.Spec.Name, typed) {
			out = append(out, vm.Spec.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// hostNames are the cluster's hosts that start with what was typed.
func (g *globals) hostNames(_ *cobra.Command, _ []string, typed string) ([]string, cobra.ShellCompDirective) {
	cl, err := g.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	nodes, err := cl.ListNodes(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, n := range nodes {
		if strings.HasPrefix(n.Name, typed) {
			out = append(out, n.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
