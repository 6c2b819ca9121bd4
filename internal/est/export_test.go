package est

// ChainOf is chainOf, for the fuzz test.
var ChainOf = chainOf
